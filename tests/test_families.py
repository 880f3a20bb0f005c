"""The model family (CLIP, SigLIP, CoCa): which loss trains which model, CoCa on kept patches, bad configs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from open_clip.loss import ClipLoss, CoCaLoss, SigLipLoss

from lightning_juicer.cli import main
from lightning_juicer.errors import ConfigError
from lightning_juicer.models import JuicerCLIP
from lightning_juicer.models.checkpoint import check_state_dict
from lightning_juicer.models.family import compute_losses
from tests.conftest import QUICKSTART


def make_batch(module: JuicerCLIP, size: int = 6, kept: int = 24, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    keep = torch.stack([torch.randperm(64, generator=generator)[:kept].sort().values for _ in range(size)])
    captions = [f"a {color} {shape} on the {side}" for color, shape, side in
                zip(["red", "blue", "green", "pink", "grey", "black"] * 2, ["star", "heart", "circle"] * 4,
                    ["left", "right"] * 6)][:size]
    return {"image": torch.randn(size, 3, 64, 64, generator=generator), "keep": keep, "text": module.tokenizer(captions)}


def test_the_family_follows_the_model_config_and_the_loss_override(tiny_model_args, tiny_coca_args):
    clip = JuicerCLIP(**tiny_model_args)
    assert clip.family.name == "clip" and type(clip.train_loss) is ClipLoss and clip.model.logit_bias is None

    siglip = JuicerCLIP(**tiny_model_args, loss="siglip")
    assert siglip.family.name == "siglip" and isinstance(siglip.train_loss, SigLipLoss)
    assert siglip.model.logit_bias.item() == -10.0
    assert siglip.model.logit_scale.item() == pytest.approx(math.log(10))
    assert siglip.model_cfg["init_logit_bias"] == -10.0  # recorded for export

    config = {**tiny_model_args["model_config"], "init_logit_bias": -5.0}  # a SigLIP config keeps its own bias
    from_config = JuicerCLIP(**{**tiny_model_args, "model_name": "tiny-sigmoid-cfg", "model_config": config})
    assert from_config.family.name == "siglip" and from_config.model.logit_bias.item() == -5.0
    assert from_config.model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))

    coca = JuicerCLIP(**tiny_coca_args)
    assert coca.family.name == "coca" and isinstance(coca.train_loss, CoCaLoss)
    assert (coca.train_loss.caption_loss_weight, coca.train_loss.clip_loss_weight) == (2.0, 1.0)


@pytest.mark.parametrize("loss, fixture", [("coca", "tiny_model_args"), ("clip", "tiny_coca_args"),
                                           ("clip", "siglip_config"), ("sigmoid", "tiny_model_args")])
def test_a_loss_that_does_not_fit_the_model_is_refused(loss, fixture, request, tiny_model_args):
    if fixture == "siglip_config":
        args = {**tiny_model_args, "model_name": "tiny-sigmoid-cfg2",
                "model_config": {**tiny_model_args["model_config"], "init_logit_bias": -10.0}}
    else:
        args = request.getfixturevalue(fixture)
    with pytest.raises(ConfigError, match=r"^model\.init_args\.loss: "):
        JuicerCLIP(**{**args, "loss": loss})


def test_siglip_and_coca_train_their_extra_parameters_and_their_loss_falls(tiny_model_args, tiny_coca_args):
    for args in ({**tiny_model_args, "loss": "siglip"}, tiny_coca_args):
        torch.manual_seed(0)
        module = JuicerCLIP(**args).train()
        batch = make_batch(module)
        optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)
        history = []
        for _ in range(12):
            terms = compute_losses(module.train_loss, module(batch))
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            history.append({name: value.item() for name, value in terms.items()})
        assert history[-1]["loss"] < 0.7 * history[0]["loss"], (module.family, history)
        if module.family.name == "siglip":
            assert module.model.logit_bias.item() != -10.0
        else:
            assert history[0]["loss"] == pytest.approx(history[0]["contrastive_loss"] + history[0]["caption_loss"])
            # 2.0 x (cross-entropy of a random decoder over 49408 tokens ~ ln 49408)
            assert history[0]["caption_loss"] == pytest.approx(2.0 * math.log(49408), rel=0.1)
            assert history[-1]["caption_loss"] < history[0]["caption_loss"] - 1.0


def test_coca_is_open_clips_coca_on_all_patches_and_sees_only_the_kept_ones(tiny_coca_args):
    torch.manual_seed(0)
    module = JuicerCLIP(**tiny_coca_args).eval()
    batch = make_batch(module, size=2, kept=16)
    with torch.no_grad():
        ours = module({**batch, "keep": None})
        reference = module.model(batch["image"], batch["text"])
        assert (ours["logits"] - reference["logits"]).abs().max() < 1e-4
        assert (ours["image_features"] - reference["image_features"]).abs().max() < 1e-5

        kept = module(batch)
        # Scribble over one patch the first image did not keep and one it kept (8 px patches, 8x8 grid).
        dropped_cell = next(i for i in range(64) if i not in batch["keep"][0].tolist())
        kept_cell = batch["keep"][0, 0].item()
        outputs = {}
        for name, cell in (("dropped", dropped_cell), ("kept", kept_cell)):
            image = batch["image"].clone()
            row, col = divmod(cell, 8)
            image[0, :, 8 * row:8 * row + 8, 8 * col:8 * col + 8] += 5.0
            outputs[name] = module({**batch, "image": image})
    assert torch.equal(outputs["dropped"]["logits"], kept["logits"])
    assert torch.equal(outputs["dropped"]["image_features"], kept["image_features"])
    assert (outputs["kept"]["logits"][0] - kept["logits"][0]).abs().max() > 1e-3
    assert torch.equal(outputs["kept"]["logits"][1], kept["logits"][1])


def test_a_checkpoint_of_another_model_config_names_the_mismatching_keys(tiny_model_args, tiny_coca_args):
    clip = JuicerCLIP(**tiny_model_args)
    siglip = JuicerCLIP(**tiny_model_args, loss="siglip")
    coca = JuicerCLIP(**tiny_coca_args)
    check_state_dict(clip.state_dict(), JuicerCLIP(**tiny_model_args).state_dict(), "ckpt_path")  # same config: fine
    with pytest.raises(ConfigError) as error:
        clip.on_load_checkpoint({"state_dict": siglip.state_dict()})
    assert str(error.value) == ("ckpt_path: the checkpoint was made for another model config; "
                                "unexpected: model.logit_bias")
    with pytest.raises(ConfigError) as error:
        clip.on_load_checkpoint({"state_dict": coca.state_dict()})
    message = str(error.value)
    assert "\n" not in message and message.startswith("ckpt_path: the checkpoint was made for another model config; ")
    assert "missing: model.ln_final.bias, " in message and "; unexpected: model.text.cls_emb, " in message
    assert message.endswith("more)")
    config = copy.deepcopy(tiny_model_args["model_config"])
    config["text_cfg"]["context_length"] = 24
    shorter = JuicerCLIP(**{**tiny_model_args, "model_name": "tiny-context-24", "model_config": config})
    with pytest.raises(ConfigError) as error:
        clip.on_load_checkpoint({"state_dict": shorter.state_dict()})
    assert str(error.value) == ("ckpt_path: the checkpoint was made for another model config; "
                                "shape checkpoint vs model: model.positional_embedding [24, 96] vs [32, 96]")


@pytest.mark.parametrize("name, expected", [
    ("siglip_quickstart", ["loss: siglip", "init_logit_bias: -10.0"]),
    ("coca_quickstart", ["multimodal_cfg:", "caption_loss_weight: 2.0", "batch_size: 32"]),
    ("siglip_vit_b16_cc3m", ["model_name: ViT-B-16", "loss: siglip", "siglip_dist_impl: bidir"]),
    ("coca_vit_b16_cc3m", ["model_name: coca_ViT-B-16", "patch_size: 16", "multimodal_cfg:", "clip_loss_weight: 1.0"]),
])
def test_family_configs_parse(name, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART.parent / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for line in expected:
        assert line in printed, line
