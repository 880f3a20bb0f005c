"""``python -m lightning_juicer`` runs the CLI."""

from lightning_juicer.cli import main

if __name__ == "__main__":
    main()
