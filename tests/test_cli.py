"""The CLI end to end: a short fit whose loss goes down, saved config, TensorBoard scalars, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_juicer.cli import main
from tests.conftest import QUICKSTART


def fit_args(tmp_path: Path, synthetic_root: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(QUICKSTART),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.max_steps", "40",
        "--trainer.val_check_interval", "20",
        "--trainer.log_every_n_steps", "1",
        "--data.init_args.synthetic.root", str(synthetic_root),
        "--data.init_args.batch_size", "32",
        "--data.init_args.num_workers", "1",
        "--model.init_args.lr", "2e-3",
        "--model.init_args.warmup_steps", "5",
        *extra,
    ]


def scalars(log_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_short_fit_through_the_cli_lowers_the_loss_and_logs_to_tensorboard(tmp_path, tiny_synthetic, capsys):
    cli = main(fit_args(tmp_path, tiny_synthetic.root))
    log_dir = Path(cli.trainer.log_dir)
    assert cli.trainer.global_step == 40
    values = scalars(log_dir)
    loss = values["train/loss"]
    assert len(loss) == 40
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 0.3
    for tag in ("train/logit_scale", "lr-AdamW/pg1", "train/device/samples_per_sec", "train/device/items_per_sec",
                "val/loss"):
        assert tag in values, tag
    images_per_s = values["train/device/samples_per_sec"][-1]
    tokens_per_s = values["train/device/items_per_sec"][-1]
    assert tokens_per_s == pytest.approx(images_per_s * 33, rel=1e-3)  # CLS + 32 of 64 patches
    assert (log_dir / "config.yaml").is_file()
    assert "keep_ratio: 0.5" in (log_dir / "config.yaml").read_text()
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()
    assert (log_dir / "manifest.json").is_file()
    out = capsys.readouterr()
    assert f"logs:        {log_dir}" in out.out + out.err
    assert "last.ckpt" in out.out + out.err

    validate = main(["validate", "--config", str(log_dir / "config.yaml"),
                     "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt")])
    assert validate.trainer.callback_metrics["val/loss"] < loss[0]

    # A checkpoint of another model config is refused in one line naming the keys, not silently adopted.
    capsys.readouterr()
    for override, named in ((["--model.init_args.lr", "1e-3"], "model.init_args.lr: checkpoint 0.002 vs config 0.001"),
                            (["--model.init_args.model_config.embed_dim", "48"], "model.init_args.model_config")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(log_dir / "config.yaml"), *override,
                  "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ckpt_path: ") and named in err and len(err.splitlines()) == 1, err


def test_command_line_overrides_reach_the_objects(tmp_path, tiny_synthetic):
    args = fit_args(tmp_path, tiny_synthetic.root, "--data.init_args.keep_ratio", "0.25")[1:]  # no subcommand
    cli = main(args, run=False)
    assert cli.datamodule.keep_ratio == 0.25
    assert cli.trainer.max_steps == 40


def test_print_config_works(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: lightning_juicer.data.JuicerDataModule" in printed and "keep_ratio: 0.5" in printed


@pytest.mark.parametrize(
    "override, message",
    [
        (["--data.init_args.keep_ratio", "1.5"], "error: data.init_args.keep_ratio: 1.5 is outside (0, 1]"),
        (["--data.init_args.train_shards", "/no/such/{00000..00003}.tar"],
         "error: data.init_args.train_shards: shard file not found: /no/such/00000.tar (and 3 more)"),
        (["--model.init_args.model_name", "ViT-Nope-16", "--model.init_args.model_config", "null"],
         "error: model.init_args.model_name: unknown open_clip model 'ViT-Nope-16'"),
    ],
)
def test_bad_input_fails_with_one_line_naming_the_key(override, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), *override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message)
    assert not any("Traceback" in line for line in err)


def test_the_cc3m_recipe_config_parses_and_builds(tiny_synthetic):
    config = QUICKSTART.parent / "clip_vit_b16_cc3m.yaml"
    cli = main(["--config", str(config), "--data.init_args.train_shards", tiny_synthetic.train_shards,
                "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto"], run=False)
    assert cli.model.hparams.model_name == "ViT-B-16" and cli.model.data_spec().num_patches == 196
    assert cli.datamodule.batch_size == 128 and cli.datamodule.keep_ratio == 0.5
    assert cli.model.hparams.weight_decay == 0.05 and tuple(cli.model.hparams.betas) == (0.9, 0.999)


def test_quickstart_logs_kept_patch_pictures_to_tensorboard_by_default(tmp_path, tiny_synthetic):
    """Issue 11: a new user's TensorBoard shows which patches the method keeps, with no extra flag."""
    cli = main(fit_args(tmp_path, tiny_synthetic.root, "--trainer.max_steps", "2"))
    callbacks = [type(c).__name__ for c in cli.trainer.callbacks]
    assert "KeptPatchPictures" in callbacks
    events = EventAccumulator(str(cli.trainer.log_dir), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    pictures = events.Images("train/kept_patches")
    assert [p.step for p in pictures] == [1]
    assert pictures[0].width > 64 and pictures[0].height > 64  # a grid of the batch's images
    assert "train/class_evidence/text_summary" in events.Tags()["tensors"]  # the shipped governor's sigmoid head
