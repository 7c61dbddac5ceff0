"""Fault injection shared by the store tests: a writer that dies after some batches."""

from __future__ import annotations

from typing import Any

import pytest

from xlalign.store.writer import RunWriter


class Crash(Exception):
    """Raised in place of a batch write, as a kill would stop the writer there."""


def crash_after(monkeypatch: pytest.MonkeyPatch, n_batches: int) -> None:
    """Make the writer die after ``n_batches`` batches, flushing every batch."""
    real_write = RunWriter.write_batch
    seen = {"n": 0}

    def write_batch(self: RunWriter, *args: Any, **kwargs: Any) -> Any:
        self.flush_interval_s = 0.0
        if seen["n"] == n_batches:
            raise Crash
        seen["n"] += 1
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(RunWriter, "write_batch", write_batch)
