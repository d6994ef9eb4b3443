"""Entry point of `python -m mae_jax.export` (the CLI lives in cli.py).

The package imports `cli` but not this module: runpy warns when the module it is
about to run as __main__ was already imported under its own name.
"""

import sys

from mae_jax.export import cli

if __name__ == "__main__":
  sys.exit(cli.main())
