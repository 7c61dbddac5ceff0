"""How one extraction runs: :class:`ExtractConfig`, the fields of ``xlalign extract``'s flags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xlalign.capture.distributed import (
    SHARD_BY,
)
from xlalign.errors import XlalignError

PADDING_SIDES = ("right", "left")

#: ``compat`` of an extraction: ``exact`` or ``mexa`` (``weighted`` pool on absolute positions).
EXTRACT_COMPAT = ("exact", "mexa")


@dataclass(frozen=True)
class ExtractConfig:
    """How to run one extraction; the fields mirror ``xlalign extract``'s flags."""

    sites: str | Sequence[str] = "all"
    """Sites to capture: embed, L<i>, L<i>-L<j>, final, all (comma-separated)."""
    pools: str | Sequence[str] = ("last", "mean")
    """Pools: last, mean, first, weighted, eos, tokens (comma-separated)."""
    batch_size: int = 32
    """Prompts per forward pass."""
    padding_side: str = "right"
    """Where padding goes in a batch: right or left (results are the same)."""
    resume: bool = False
    """Continue an incomplete run in the output folder."""
    overwrite: bool = False
    """Replace a run already in the output folder."""
    shard_by: str = "batch"
    """Data-parallel launches: deal out batches, or whole languages (one writer per file)."""
    compat: str = "exact"
    """mexa: the weighted pool counts positions in the padded batch, as MEXA's code does."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise XlalignError(f"--batch-size must be an integer, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise XlalignError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.padding_side not in PADDING_SIDES:
            raise XlalignError(f"--padding-side must be left or right, got '{self.padding_side}'")
        if self.shard_by not in SHARD_BY:
            raise XlalignError(
                f"--shard-by must be one of {', '.join(SHARD_BY)}, got '{self.shard_by}'"
            )
        if self.compat not in EXTRACT_COMPAT:
            raise XlalignError(
                f"--compat must be one of {', '.join(EXTRACT_COMPAT)} for extract, "
                f"got '{self.compat}'"
            )
        if self.resume and self.overwrite:
            raise XlalignError(
                "--resume and --overwrite conflict: --resume continues the run in the output "
                "folder, --overwrite deletes it"
            )
