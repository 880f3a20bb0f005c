"""``export``: a trained Lightning checkpoint loads in plain open_clip and gives the same embeddings."""

from __future__ import annotations

import lightning as L
import open_clip
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_juicer.cli import main
from lightning_juicer.models import JuicerCLIP

FAMILIES = ("clip", "siglip", "coca")


def one_batch(module: JuicerCLIP) -> dict:
    generator = torch.Generator().manual_seed(0)
    captions = ["a red star on the left", "a blue heart", "a green circle at the top", "two pink squares"]
    return {"image": torch.randn(4, 3, 64, 64, generator=generator),
            "keep": torch.stack([torch.randperm(64, generator=generator)[:32].sort().values for _ in range(4)]),
            "text": module.tokenizer(captions)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_args, tiny_coca_args):
    """One real optimizer step per family, saved by the Trainer as a Lightning checkpoint."""
    root = tmp_path_factory.mktemp("export")
    runs = {}
    for family, args in zip(FAMILIES, (tiny_model_args, {**tiny_model_args, "loss": "siglip"}, tiny_coca_args)):
        torch.manual_seed(0)
        module = JuicerCLIP(**args)
        initial = module.model.logit_scale.item()
        trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, train_dataloaders=DataLoader([one_batch(module)], batch_size=None))
        assert module.model.logit_scale.item() != initial  # the exported weights are trained ones
        trainer.save_checkpoint(root / f"{family}.ckpt")
        runs[family] = (module.eval(), root / f"{family}.ckpt")
    return root, runs


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_folder_loads_in_open_clip_with_the_same_embeddings(trained, family):
    root, runs = trained
    module, ckpt = runs[family]
    out = root / f"juicer-exported-{family.replace('siglip', 'sigmoid')}"  # open_clip: 'siglip' names = T5 tokenizer
    main(["export", "--ckpt_path", str(ckpt), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["open_clip_config.json", "open_clip_model.safetensors", f"{out.name}.json"])

    by_dir = open_clip.create_model(f"local-dir:{out}")
    open_clip.add_model_config(out)
    by_name = open_clip.create_model(out.name, pretrained=str(out / "open_clip_model.safetensors"))
    batch = one_batch(module)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    assert torch.equal(tokenizer(["a red star on the left"]), module.tokenizer(["a red star on the left"]))
    with torch.no_grad():
        image = module.encode_image(batch["image"], keep=None)
        text = module.encode_text(batch["text"])
        for model in (by_dir.eval(), by_name.eval()):
            assert type(model) is type(module.model)
            assert (model.encode_image(batch["image"], normalize=True) - image).abs().max() < 1e-5
            assert (model.encode_text(batch["text"], normalize=True) - text).abs().max() < 1e-5
            assert model.logit_scale.item() == module.model.logit_scale.item()
            if family == "siglip":
                assert model.logit_bias.item() == module.model.logit_bias.item()
            if family == "coca":
                ours = module({**batch, "keep": None})["logits"]
                assert (model(batch["image"], batch["text"])["logits"] - ours).abs().max() < 1e-4
    assert tuple(by_dir.visual.preprocess_cfg["mean"]) == tuple(module.model.visual.preprocess_cfg["mean"])


def test_export_refuses_a_checkpoint_of_another_model_config(trained, capsys):
    root, runs = trained
    clip = torch.load(runs["clip"][1], weights_only=True)
    siglip = torch.load(runs["siglip"][1], weights_only=True)
    torch.save({**clip, "state_dict": siglip["state_dict"]}, root / "mixed.ckpt")
    for ckpt, message in (
        (root / "mixed.ckpt", "error: ckpt_path: the checkpoint was made for another model config; "
                              "unexpected: model.logit_bias"),
        (root / "missing.ckpt", f"error: ckpt_path: checkpoint file not found: {root / 'missing.ckpt'}"),
        (runs["siglip"][1], "error: name: 'my-siglip' contains 'siglip', which makes open_clip pick another "
                            "tokenizer; rename it"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--ckpt_path", str(ckpt), "--out", str(root / "refused"), "--name", "my-siglip"]
                 if "siglip" in message else ["export", "--ckpt_path", str(ckpt), "--out", str(root / "refused")])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not (root / "refused").exists()
