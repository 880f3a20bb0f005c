"""`python -m lightning_juicer embeddings` (see configs/preprocess/embeddings.yaml)."""
import sys

from lightning_juicer.cli import main

if __name__ == "__main__":
    main(["embeddings", *sys.argv[1:]])
