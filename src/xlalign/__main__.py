"""``python -m xlalign`` (also what ``accelerate launch -m xlalign`` runs)."""

from xlalign.cli import main

if __name__ == "__main__":
    main()
