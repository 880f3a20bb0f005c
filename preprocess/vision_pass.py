"""`python -m lightning_juicer vision` (see configs/preprocess/vision.yaml)."""
import sys

from lightning_juicer.cli import main

if __name__ == "__main__":
    main(["vision", *sys.argv[1:]])
