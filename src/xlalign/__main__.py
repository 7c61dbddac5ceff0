"""``python -m xlalign`` (also what ``torchrun -m xlalign`` and ``accelerate launch -m xlalign`` run)."""

import sys

from xlalign.cli import main

if __name__ == "__main__":
    sys.exit(main())
