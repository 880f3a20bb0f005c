"""The variable-token image tower against open_clip's own ViT forward."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_juicer.errors import ConfigError
from lightning_juicer.models import JuicerCLIP
from lightning_juicer.models.tower import encode_kept


def make_model(args: dict, name: str, **vision_overrides) -> JuicerCLIP:
    args = copy.deepcopy(args)
    args["model_name"] = name
    args["model_config"]["vision_cfg"].update(vision_overrides)
    torch.manual_seed(0)
    return JuicerCLIP(**args).eval()


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("tower-tok", {}),
        ("tower-avg", {"pool_type": "avg"}),
        ("tower-ln-after-pool", {"final_ln_after_pool": True, "no_ln_pre": True}),
    ],
)
def test_all_patches_equal_open_clip_encode_image(tiny_model_args, name, overrides):
    model = make_model(tiny_model_args, name, **overrides)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        reference = model.model.encode_image(images)
        all_in_order = torch.arange(64).expand(3, -1)
        ours_none = model.encode_image(images, keep=None, normalize=False)
        ours_all = model.encode_image(images, keep=all_in_order, normalize=False)
    assert (ours_none - reference).abs().max() < 1e-4
    assert (ours_all - reference).abs().max() < 1e-4


def test_kept_tokens_carry_their_own_position_embedding(tiny_model_args):
    model = make_model(tiny_model_args, "tower-pos")
    visual = model.model.visual
    images = torch.randn(2, 3, 64, 64)
    keep = torch.stack([torch.randperm(64)[:20].sort().values for _ in range(2)])
    entering = []  # what the transformer receives (open_clip's embedding, pre-norm, on the kept tokens)
    hook = visual.transformer.register_forward_pre_hook(lambda module, args: entering.append(args[0]))
    with torch.no_grad():
        encode_kept(visual, images, keep)
        hook.remove()
        tokens = entering[0]
        patches = visual.conv1(images).flatten(2).transpose(1, 2)
        pos = visual.positional_embedding
        expected = torch.stack(
            [
                torch.cat([(visual.class_embedding + pos[0])[None], patches[b, keep[b]] + pos[1 + keep[b]]])
                for b in range(2)
            ]
        )
        expected = visual.ln_pre(expected)
    assert tokens.shape == (2, 21, visual.conv1.out_channels)
    assert torch.allclose(tokens, expected, atol=1e-6)


def test_fewer_tokens_change_the_embedding_and_keep_shapes(tiny_model_args):
    model = make_model(tiny_model_args, "tower-subset")
    images = torch.randn(2, 3, 64, 64)
    keep = torch.arange(0, 64, 2).expand(2, -1)
    with torch.no_grad():
        pooled, tokens = encode_kept(model.model.visual, images, keep)
        full, _ = encode_kept(model.model.visual, images, None)
    assert pooled.shape == full.shape == (2, 96)
    assert tokens.shape[1] == 32
    assert not torch.allclose(pooled, full, atol=1e-3)


def test_gradients_reach_only_kept_position_embeddings(tiny_model_args):
    model = make_model(tiny_model_args, "tower-grad").train()
    images = torch.randn(2, 3, 64, 64)
    keep = torch.tensor([[0, 5, 9], [5, 9, 63]])
    model.encode_image(images, keep).sum().backward()
    grad_rows = model.model.visual.positional_embedding.grad.abs().sum(dim=1).nonzero().flatten().tolist()
    assert grad_rows == [0, 1, 6, 10, 64]


class DropTheSamePatches(torch.nn.Module):
    """An open_clip ``patch_dropout`` stage that drops every patch but ``keep`` (CLS kept), as PatchDropout does."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.keep = keep

    def forward(self, x):
        rows = torch.arange(x.shape[0])[:, None]
        return torch.cat([x[:, :1], x[rows, 1 + self.keep]], dim=1)


def test_kept_patches_are_bit_identical_to_open_clip_with_the_same_patches_dropped(tiny_model_args, tiny_coca_args):
    for args, name in ((tiny_model_args, "tower-same-drop"), (tiny_coca_args, None)):
        model = make_model(args, name or args["model_name"])
        visual = model.model.visual
        images = torch.randn(3, 3, 64, 64)
        keep = torch.stack([torch.randperm(64)[:24].sort().values for _ in range(3)])
        with torch.no_grad():
            ours = encode_kept(visual, images, keep)
            reference = copy.deepcopy(visual)
            reference.patch_dropout, reference.output_tokens = DropTheSamePatches(keep), True
            pooled, tokens = reference(images)
        assert torch.equal(ours[0], pooled) and torch.equal(ours[1], tokens)
        assert visual.output_tokens == (name is None)  # encode_kept leaves open_clip's setting as it was


def test_a_configured_patch_dropout_is_refused_naming_the_key(tiny_model_args):
    with pytest.raises(ConfigError, match=r"^model.init_args.model_config.vision_cfg.patch_dropout: .*keep_ratio"):
        make_model(tiny_model_args, "tower-patch-dropout", patch_dropout=0.5)
