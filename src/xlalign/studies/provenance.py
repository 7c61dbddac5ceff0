"""What each derived output was computed from, and refusing outputs that do not belong together.

Every output derived from a run records the arrays it read (``run_fingerprint``, the run's
:attr:`~xlalign.store.Run.fingerprint`) and its settings (a sweep: :data:`VALUE_SETTINGS`); a
``findings.json`` records, per study that wrote it, the SHA-256, fingerprint and settings of the
sweeps it was computed from (``inputs``). :func:`study_problems` lists every disagreement in a
study folder: a sweep of arrays that are no longer the run's (extracted again since), a model
sweep beside a control sweep of other settings (``--center`` on one only, as a ``kill -9`` of
``run --center`` between the two sweeps leaves), findings computed from other sweeps than those
beside them. Readers that combine these files refuse or recompute on any of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xlalign.store.files import CONTROL_DIR, MANIFEST
from xlalign.store.run import Run
from xlalign.studies.compare import VALUE_SETTINGS
from xlalign.studies.layers import SweepConfig

ALIGNMENT = "alignment.json"
FINDINGS = "findings.json"


def _sha256(path: Path) -> str | None:
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def sweep_settings(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The value settings a sweep document was computed with (a key it predates: the default)."""
    base = SweepConfig()
    out = {}
    for key in VALUE_SETTINGS:
        value = doc.get(key)
        if key == "null_perms" and value is None:
            value = 0  # sweeps made before the permutation nulls had none
        elif value is None and key not in ("stratify", "ci_method"):
            value = getattr(base, key)  # ci_method: None for the old bootstrap's intervals
        out[key] = value
    return out


def settings_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """``center: True, not False`` for each value setting of sweep ``a`` that ``b`` does not
    share."""
    sa, sb = sweep_settings(a), sweep_settings(b)
    return [f"{k}: {sa[k]!r}, not {sb[k]!r}" for k in VALUE_SETTINGS if sa[k] != sb[k]]


def sweep_identity(path: Path) -> dict[str, Any] | None:
    """What a findings document records of the sweep file at ``path``: its SHA-256, the run
    fingerprint and the value settings; None where the file is absent or not JSON."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    return {
        "file": str(path),
        "sha256": _sha256(path),
        "run_fingerprint": doc.get("run_fingerprint"),
        "settings": sweep_settings(doc),
    }


def sweep_inputs(model_sweep: Path | None, control_sweep: Path | None) -> dict[str, Any]:
    """The ``inputs`` a findings document records: the identities of the sweeps it read."""
    return {
        "alignment": None if model_sweep is None else sweep_identity(model_sweep),
        "control_alignment": None if control_sweep is None else sweep_identity(control_sweep),
    }


def stale_sweep(doc: Mapping[str, Any], run: Run) -> str | None:
    """Why a stored sweep of ``run`` does not describe its arrays now, or None.

    A sweep that predates ``run_fingerprint`` is taken as the run's (nothing to compare)."""
    recorded = doc.get("run_fingerprint")
    if recorded is None or recorded == run.fingerprint:
        return None
    return (
        f"it was computed from other arrays (run fingerprint {recorded}, the run's now "
        f"{run.fingerprint}: extracted again since)"
    )


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def study_problems(folder: Path, run: Run | None = None, control: Run | None = None) -> list[str]:
    """Every disagreement between the outputs in study folder ``folder`` (see the module)."""
    folder = Path(folder)
    ctl_folder = folder / CONTROL_DIR
    model_path, ctl_path = folder / ALIGNMENT, ctl_folder / ALIGNMENT
    model, ctl = _read(model_path), _read(ctl_path)
    problems: list[str] = []
    for doc, path, owner in ((model, model_path, run), (ctl, ctl_path, control)):
        why = None if doc is None or owner is None else stale_sweep(doc, owner)
        if why:
            problems.append(f"{path}: {why}")
    if model is not None and ctl is not None and (ctl_folder / MANIFEST).is_file():
        differ = settings_difference(model, ctl)
        if differ:
            problems.append(
                f"{model_path} and {ctl_path} were swept with other settings ({'; '.join(differ)})"
            )
    findings = _read(folder / FINDINGS)
    parts = (findings or {}).get("parts") or {}
    for source, part in parts.items():
        inputs = (part or {}).get("inputs") or {}
        for key, path, doc in (("alignment", model_path, model), ("control_alignment",
                                                                   ctl_path, ctl)):  # fmt: skip
            used = inputs.get(key)
            if not isinstance(used, dict) or used.get("sha256") in (None, _sha256(path)):
                continue
            differ = [] if doc is None else settings_difference(used.get("settings") or {}, doc)
            what = "; ".join(differ) if differ else "its content differs"
            problems.append(
                f"{folder / FINDINGS} ({source}) was computed from another {path} ({what})"
            )
    return problems
