"""Warm-starting the open_clip image tower from a timm ViT (model.init_args.vision_init)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.loading import load_governor_model
from lightning_juicer.models import JuicerCLIP
from lightning_juicer.models.tower import encode_kept
from lightning_juicer.models.vision_init import init_visual_from_timm


def _tiny_pair(tiny_model_args, with_pre_norm: bool = False):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                               depth=2, num_heads=2, mlp_ratio=2.0, num_classes=0, pre_norm=with_pre_norm).eval()
    with torch.no_grad():  # make every folded term matter
        if source.patch_embed.proj.bias is not None:  # pre-norm ViTs have none, as in CLIP
            source.patch_embed.proj.bias.normal_(0, 0.5)
        source.cls_token.normal_(0, 0.5)
    args = copy.deepcopy(tiny_model_args)
    args["model_config"]["vision_cfg"] = {"image_size": 32, "patch_size": 8, "width": 48, "head_width": 24,
                                          "layers": 2, "mlp_ratio": 2.0, "no_ln_pre": not with_pre_norm}
    return source, JuicerCLIP(**args).eval()


@pytest.mark.parametrize("with_pre_norm", [False, True])
def test_copied_tower_computes_the_timm_models_tokens(tiny_model_args, with_pre_norm):
    source, student = _tiny_pair(tiny_model_args, with_pre_norm)
    visual = student.model.visual
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before, _ = encode_kept(visual, images, None)
        init_visual_from_timm(visual, source, "tiny timm ViT")
        pooled, _ = encode_kept(visual, images, None)
        expected = source.forward_features(images)[:, 0] @ visual.proj
    # LayerNorm eps differs (timm 1e-6, open_clip 1e-5): equal up to that, far from the random tower
    assert torch.allclose(pooled, expected, atol=2e-3, rtol=1e-3)
    assert (before - expected).abs().max() > 0.1


def test_quickstart_tower_starts_from_the_shipped_governor(tiny_model_args):
    model = JuicerCLIP(**{**tiny_model_args, "vision_init": "juicer-synthetic"})
    governor = load_governor_model("juicer-synthetic")
    assert torch.equal(model.model.visual.conv1.weight, governor.patch_embed.proj.weight)
    block, gblock = model.model.visual.transformer.resblocks[3], governor.blocks[3]
    assert torch.equal(block.attn.in_proj_weight, gblock.attn.qkv.weight)
    assert torch.equal(block.mlp.c_proj.weight, gblock.mlp.fc2.weight)
    assert model.model.visual.conv1.weight.requires_grad  # a starting point: the tower still trains


def test_a_tower_of_another_shape_is_refused_naming_the_key(tiny_model_args):
    args = copy.deepcopy(tiny_model_args)
    args["model_config"]["vision_cfg"]["layers"] = 3
    with pytest.raises(ConfigError, match=r"model.init_args.vision_init: juicer-synthetic does not match .*resblocks.3"):
        JuicerCLIP(**{**args, "vision_init": "juicer-synthetic"})


def test_vision_init_and_pretrained_together_are_refused(tiny_model_args, tmp_path):
    with pytest.raises(ConfigError, match="model.init_args.vision_init: set either"):
        JuicerCLIP(**{**tiny_model_args, "vision_init": "juicer-synthetic", "pretrained": str(tmp_path / "x.pt")})


def test_unknown_vision_init_names_the_models_key(tiny_model_args, tmp_path):
    with pytest.raises(ConfigError, match="model.init_args.vision_init"):
        JuicerCLIP(**{**tiny_model_args, "vision_init": str(tmp_path / "missing_governor")})
