"""Sample-level sieve: ``python preprocess/sieve.py ARGS`` = ``python -m lightning_juicer sieve ARGS``."""
import sys
from lightning_juicer.errors import exit_on_user_error
from lightning_juicer.sieves.command import main
exit_on_user_error(main, sys.argv[1:])
