"""Sample-level sieve: ``python preprocess/sieve.py ARGS`` = ``python -m lightning_juicer sieve ARGS``."""
import sys

from lightning_juicer.cli import main

if __name__ == "__main__":
    main(["sieve", *sys.argv[1:]])
