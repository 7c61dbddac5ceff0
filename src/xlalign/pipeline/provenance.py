"""``provenance.json`` and the report's source lines: versions, checksums, fingerprints, licences and wall time per stage."""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlalign.data.corpus import ParallelCorpus
from xlalign.pipeline.config import StudyConfig
from xlalign.store.run import Run


def _corpus_licence(cfg: StudyConfig) -> dict[str, str] | None:
    from xlalign.data.corpora import LICENCES

    name = cfg.data if cfg.problems is None else "problems"
    return LICENCES.get(str(name)) if name and not Path(str(name)).exists() else None


def source_lines(run: Run, cfg: StudyConfig) -> list[str]:
    """Where the weights and the corpus came from, when a reader must know: a GGUF model's
    dequantization, a built-in corpus's licence and attribution."""
    lines = []
    checkpoint = run.manifest.get("checkpoint") or {}
    if checkpoint.get("format") == "gguf":
        lines.append(
            f"weights: {checkpoint.get('note')}; file {checkpoint.get('file')} "
            f"({checkpoint.get('quantization')}, sha256 {str(checkpoint.get('sha256'))[:12]}...)"
        )
    licence = _corpus_licence(cfg)
    if licence is not None and cfg.data is not None:
        lines.append(
            f"corpus: {licence['name']}; {licence['licence']}; by {licence['attribution']}"
        )
    return lines


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tokenizer_fingerprint(run: Run) -> str | None:
    folder = run.path / "tokenizer"
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            h.update((_file_sha256(p) or "").encode())
    return h.hexdigest()


def build_provenance(
    run: Run,
    control: Run | None,
    corpus: ParallelCorpus,
    cfg: StudyConfig,
    command: list[str] | None,
    clock: StageClock,
    started: float,
) -> dict[str, Any]:
    m = run.manifest
    return {
        "versions": m.get("versions"),
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "model": {
            "id": m.get("model"),
            "revision": m.get("revision"),
            "commit_hash": m.get("commit_hash"),
            "weights_fingerprint": m.get("weights_fingerprint"),
            "checkpoint": m.get("checkpoint"),
            "architecture": m.get("architecture"),
            "dtype": m.get("dtype"),
            "device": m.get("device"),
        },
        "tokenizer": {
            "name": m.get("tokenizer_name"),
            "fingerprint": _tokenizer_fingerprint(run),
            "adds_bos": m.get("adds_bos"),
        },
        "corpus": {
            "source": corpus.source,
            "fingerprint": corpus.fingerprint(),
            "rows": len(corpus),
            "languages": list(corpus.languages),
            "licence": _corpus_licence(cfg),
        },
        "control": None
        if control is None
        else {"kind": "random-init", "seed": cfg.control_seed, "run": str(control.path)},
        "command": command if command is not None else sys.argv,
        "stages": dict(clock.notes),
        "wall_time_s": dict(clock.times),
    }


@dataclass
class StageClock:
    """Wall time per stage, printed as one progress line per stage."""

    say: Callable[[str], None]
    times: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, total: int, index: int) -> Iterator[None]:
        self.say(f"[{index}/{total}] {name} ...")
        t0 = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t0, 3)
        note = f" ({self.notes[name]})" if name in self.notes else ""
        self.say(f"[{index}/{total}] {name} done in {self.times[name]:.1f} s{note}")
