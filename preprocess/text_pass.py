"""`python -m lightning_juicer text` (see configs/preprocess/text.yaml)."""
import sys

from lightning_juicer.cli import main

if __name__ == "__main__":
    main(["text", *sys.argv[1:]])
