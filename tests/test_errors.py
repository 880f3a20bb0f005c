"""Bad input to every command ends in ONE line naming the key or file and exit status 2, never a traceback.

Each entry point runs once as a real subprocess (``python -m lightning_juicer`` fit and export,
``preprocess/{vision_pass,text_pass,embeddings,sieve}.py``); its other cases and the many command-line
variants run in-process through the same boundary (``cli.main``). A crafted checkpoint whose pickle calls ``os.system`` is refused without running it.
Unwritable output folders are paths under a regular file: that fails for root too, unlike a
read-only permission bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_juicer.callbacks.evaluation import checkpoint_step
from lightning_juicer.cli import main
from lightning_juicer.errors import ConfigError, exit_on_user_error
from lightning_juicer.models.module import JuicerCLIP
from lightning_juicer.outputs import check_writable
from lightning_juicer.safe_load import safe_load
from tests.conftest import QUICKSTART, REPO


class _RunsCode:
    """Unpickling this calls os.system (what a crafted checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_args):
    """A good tiny checkpoint, truncated / random / empty / crafted ones, and a regular file to nest paths under."""
    root = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    module = JuicerCLIP(**tiny_model_args)
    good = root / "good.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {**dict(module.hparams), "pretrained": None},
                "pytorch-lightning_version": L.__version__, "global_step": 7}, good)
    data = good.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (root / "random.ckpt").write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                                     dtype=torch.uint8).numpy().tobytes())
    (root / "empty.ckpt").write_bytes(b"")
    marker = root / "PWNED"
    torch.save({"state_dict": {}, "global_step": _RunsCode(marker)}, root / "crafted.ckpt")
    (root / "a_file").write_text("not a folder")
    return root


def _command(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("JUICER_TRACEBACK", None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _assert_one_line(result: subprocess.CompletedProcess | str, prefix: str, code: int | None = 2) -> str:
    """stderr ends with one ``error: <prefix>...`` line, holds no traceback, and the status is ``code``."""
    err = result if isinstance(result, str) else result.stderr
    if not isinstance(result, str):
        assert result.returncode == code, err[-3000:]
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"error: {prefix}"), err[-3000:]
    assert "Traceback" not in err
    return lines[-1]


def _fit(tmp: Path, *extra: str) -> list[str]:
    return ["-m", "lightning_juicer", "fit", "--config", str(QUICKSTART), "--trainer.default_root_dir", str(tmp),
            "--trainer.logger.init_args.save_dir", str(tmp), "--data.init_args.synthetic.root", str(tmp / "nodata"),
            *extra]


# ---------------------------------------- real commands: one subprocess per entry point, its variants in-process

SUBCOMMANDS = {"vision_pass": "vision", "text_pass": "text", "embeddings": "embeddings"}  # configs/preprocess/<sub>.yaml


def _run(capsys, args: list[str], real: bool) -> subprocess.CompletedProcess | str:
    """The command in a subprocess (``real``: the entry point itself), else through the same boundary
    (``cli.main``, which every entry point calls) in this process: a Python with torch and Lightning takes
    ~8 s to start here, so each entry point gets one real run and its other cases run in-process."""
    if real:
        return _command(*args)
    argv = args[2:] if args[:2] == ["-m", "lightning_juicer"] else [SUBCOMMANDS[Path(args[0]).stem], *args[1:]]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("sub, name, message, real", [
    ("validate", "truncated", "is truncated or not a torch checkpoint", False),
    ("fit", "crafted", "cannot be loaded: refused: it asks to import code", True),
])
def test_fit_and_validate_refuse_a_bad_checkpoint_in_one_line(files, tmp_path, capsys, sub, name, message, real):
    args = _fit(tmp_path, "--ckpt_path", str(files / f"{name}.ckpt"))
    args[2] = sub
    line = _assert_one_line(_run(capsys, args, real), f"ckpt_path: {files / name}.ckpt")
    assert message in line
    assert not (files / "PWNED").exists()  # the crafted pickle's os.system never ran


@pytest.mark.parametrize("key", ["trainer.default_root_dir", "trainer.logger.init_args.save_dir"])
def test_fit_into_an_unwritable_folder_fails_before_training(files, tmp_path, capsys, key):
    args = _fit(tmp_path, f"--{key}", str(files / "a_file" / "runs"))
    line = _assert_one_line(_run(capsys, args, False), f"{key}: cannot write into {files / 'a_file' / 'runs'}")
    assert "Not a directory" in line


def test_an_unknown_key_is_one_line_not_a_usage_dump(tmp_path, capsys):
    err = _run(capsys, _fit(tmp_path, "--trainer.max_stepz", "3"), False)
    assert _assert_one_line(err, "trainer.max_stepz: unknown key").endswith("fit --help)")
    assert len(err.strip().splitlines()) == 1


def test_export_refuses_a_crafted_checkpoint_and_an_unwritable_folder(files, capsys):
    result = _command("-m", "lightning_juicer", "export", "--ckpt_path", str(files / "crafted.ckpt"),
                      "--out", str(files / "out"))
    _assert_one_line(result, f"ckpt_path: {files / 'crafted.ckpt'} is not a readable Lightning checkpoint: refused")
    assert not (files / "PWNED").exists() and not (files / "out").exists()
    args = ["-m", "lightning_juicer", "export", "--ckpt_path", str(files / "good.ckpt"), "--out", str(files / "a_file" / "out")]
    _assert_one_line(_run(capsys, args, False), f"out: cannot write into {files / 'a_file' / 'out'}")


@pytest.mark.parametrize("script, overrides, message, real", [
    ("vision_pass", ["--sidecar_dir", "{bad}"], "sidecar_dir: cannot write into {bad}", True),
    ("text_pass", ["--sidecar_dir", "{vision}", "--output_dir", "{bad}", "--backend", "rules"],
     "output_dir: cannot write into {bad}", True),
    ("embeddings", ["--out_dir", "{bad}", "--governor.name", "juicer-synthetic"], "out_dir: cannot write into {bad}",
     False),
    ("embeddings", ["--out_dir", "{tmp}", "--reference.name", "{files}/crafted.ckpt"],
     "reference.name: {files}/crafted.ckpt is not a readable Lightning checkpoint: refused", True),
    ("vision_pass", ["--batch_size", "abc"], "batch_size: Not of type PositiveInt: invalid literal for int()", False),
])
def test_preprocess_commands_fail_in_one_line(files, tmp_path, tiny_synthetic, capsys, script, overrides, message,
                                              real):
    vision = tmp_path / "vision"
    vision.mkdir()
    for shard in Path(tiny_synthetic.train_shards).parent.glob("*.tar"):  # the text pass looks for these first
        (vision / shard.name.replace(".tar", ".juice.parquet")).write_bytes(b"")
    values = {"bad": files / "a_file" / "out", "vision": vision, "files": files, "tmp": tmp_path / "out"}
    config = REPO / "configs" / "preprocess" / f"{SUBCOMMANDS[script]}.yaml"
    args = [f"preprocess/{script}.py", "--config", str(config), "--shards", tiny_synthetic.train_shards,
            "--accelerator", "cpu", "--devices", "1", "--num_workers", "0", "--progress", "false",
            *(o.format(**values) for o in overrides)]
    _assert_one_line(_run(capsys, args, real), message.format(**values))
    assert not (files / "PWNED").exists()


def test_the_sieve_checks_its_output_folder_before_reading_anything(files, tmp_path):
    result = _command("preprocess/sieve.py", "--config", "configs/preprocess/sieve.yaml", "--sieve", "random",
                      "--embeddings", f"{tmp_path}/missing.emb.parquet", "--out", f"{files}/a_file/keep.json")
    _assert_one_line(result, f"out: {files / 'a_file'} is a file, not a folder")


# ------------------------------------------------------------- the same boundary in-process: many variants


@pytest.mark.parametrize("extra, message", [
    (["--model.init_args.lrr", "3"],
     "model.init_args.lrr: unknown key (lightning_juicer.models.JuicerCLIP has no 'lrr')"),
    (["--model.init_args.lr", "abc"], "model.init_args.lr: Expected a float. Got value: abc"),
    (["--data.init_args.nope", "1"], "data.init_args.nope: unknown key"),
    (["--trainer.max_steps", "abc"], "trainer.max_steps: Expected a int. Got value: abc"),
    (["--config", "{yaml}"], "Subcommand 'fit' does not accept option 'trainer.max_stepz'"),
    (["--config", "{missing}"], "config: File does not exist"),
    (["--weights_only", "false"], "weights_only: false would let a checkpoint run code"),
    (["--ckpt_path", "{files}/random.ckpt"], "ckpt_path: {files}/random.ckpt cannot be loaded: not a torch checkpoint"),
    (["--ckpt_path", "{files}/empty.ckpt"], "ckpt_path: {files}/empty.ckpt is empty"),
    (["--ckpt_path", "{files}/missing.ckpt"], "ckpt_path: file not found: {files}/missing.ckpt"),
])
def test_command_line_errors_are_one_line(files, tmp_path, capsys, extra, message):
    (tmp_path / "bad.yaml").write_text("trainer:\n  max_stepz: 3\n")
    values = {"yaml": tmp_path / "bad.yaml", "missing": tmp_path / "missing.yaml", "files": files}
    with pytest.raises(SystemExit) as exit_info:
        main(_fit(tmp_path, *(e.format(**values) for e in extra))[2:])
    assert exit_info.value.code == 2
    _assert_one_line(capsys.readouterr().err, message.format(**values), code=None)


def test_an_unknown_subcommand_and_help_and_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fitt"])
    assert exit_info.value.code == 2
    _assert_one_line(capsys.readouterr().err, "argument subcommand: invalid choice: 'fitt'", code=None)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0 and "--trainer.max_steps" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["vision", "embeddings"])
@pytest.mark.parametrize("overrides, message", [
    (["=3"], "unrecognized arguments: =3 (see python -m lightning_juicer {command} --help)"),
    (["batch_size"], "unrecognized arguments: batch_size"),
    (["batch_size=3"], "batch_size: the passes take --batch_size 3 (jsonargparse), not batch_size=3"),
    (["--nokey", "1"], "nokey: unknown key"),
    (["--governor.nope", "1"], "governor.nope: unknown key"),
    (["--config", "{yaml}"], "governor.nope: unknown key"),
    (["--on_mismatch", "keep"], "on_mismatch: Expected a typing.Literal['error', 'overwrite']. Got value: keep"),
    (["--num_workers", "-1"], "num_workers: Not of type NonNegativeInt"),
    (["--shards", "null"], "shards: no shards given"),
])
def test_pass_command_line_errors_are_one_line(tiny_synthetic, tmp_path, capsys, command, overrides, message):
    (tmp_path / "bad.yaml").write_text("governor:\n  nope: 1\n")
    values = {"yaml": tmp_path / "bad.yaml", "command": command}
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", str(REPO / f"configs/preprocess/{command}.yaml"),
              "--shards", tiny_synthetic.train_shards, *(o.format(**values) for o in overrides)])
    assert exit_info.value.code == 2
    _assert_one_line(capsys.readouterr().err, message.format(**values), code=None)


def test_a_bug_keeps_its_traceback_and_user_errors_can_show_theirs(monkeypatch):
    def bug():
        raise KeyError("a real bug")

    with pytest.raises(KeyError, match="a real bug"):
        exit_on_user_error(bug)

    def user_error():
        raise ConfigError("key: bad")

    with pytest.raises(SystemExit):
        exit_on_user_error(user_error)
    monkeypatch.setenv("JUICER_TRACEBACK", "1")
    with pytest.raises(ConfigError):
        exit_on_user_error(user_error)


# ------------------------------------------------------------------------------------------- safe loading


def test_every_checkpoint_reader_refuses_a_crafted_pickle_without_running_it(files):
    with pytest.raises(ConfigError, match="refused: it asks to import code .*posix.system"):
        safe_load(files / "crafted.ckpt", "ckpt_path")
    assert checkpoint_step(files / "crafted.ckpt") is None  # the evaluation callbacks' step lookup
    assert checkpoint_step(files / "good.ckpt") == 7
    assert not (files / "PWNED").exists()


def test_a_checkpoint_naming_another_class_is_refused(files, tmp_path):
    from lightning_juicer.models.checkpoint import load_lightning_checkpoint
    from lightning_juicer.models.export import module_from_checkpoint

    checkpoint = load_lightning_checkpoint(str(files / "good.ckpt"))
    checkpoint["hyper_parameters"]["_class_path"] = "subprocess.Popen"
    with pytest.raises(ConfigError, match="'subprocess.Popen' is not a JuicerCLIP; refused"):
        module_from_checkpoint(checkpoint)


def test_the_writability_probe_creates_the_folder_and_leaves_nothing(tmp_path):
    folder = check_writable(tmp_path / "a" / "b", "out")
    assert folder.is_dir() and list(folder.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="^out: .* is a file, not a folder"):
        check_writable(tmp_path / "f", "out")


def _script_main(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_preprocess_{name}", REPO / "preprocess" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("script, argv, message", [
    ("make_synthetic", ["root=x"], "unrecognized arguments: root=x"),
    ("make_synthetic", ["--rooot", "x"], "rooot: unknown key"),
    ("make_real_photos", ["--num_train", "many"], "num_train: "),
    ("fit_head", ["--epochs", "x"], "epochs: "),
    ("import_governor", ["--img_sizee", "3"], "img_sizee: unknown key"),
    ("train_governor", ["--stepz", "3"], "stepz: unknown key"),
])
def test_preprocess_scripts_print_one_line_not_a_usage_dump(capsys, script, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(_script_main(script), argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
