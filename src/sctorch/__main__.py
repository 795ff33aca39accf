"""``python -m sctorch ...``: the ``sctorch`` command (also under ``torchrun -m sctorch``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
