"""Kill rate of the last ``mutmut run``, per module, net of the mutants judged equivalent.

Run from the repository root after ``mutmut run`` (``make mutate`` does both). Reads the
statuses with ``mutmut results --all true`` and the equivalent mutants (a mutant that no test
can kill because it does not change behaviour) from ``tests/mutation_equivalent.txt``, one
``<mutant name>  # why`` per line; docs/testing.md lists the survivors and explains them.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

EQUIVALENT = Path(__file__).with_name("mutation_equivalent.txt")


def statuses() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("xlalign."):
            found[name] = status.strip()
    return found


def equivalent() -> dict[str, str]:
    if not EQUIVALENT.exists():
        return {}
    out = {}
    for line in EQUIVALENT.read_text(encoding="utf-8").splitlines():
        name, _, why = line.partition("#")
        if name.strip():
            out[name.strip()] = why.strip()
    return out


def module_of(name: str) -> str:
    return name.split(".x_")[0].split(".xǁ")[0]


def main() -> int:
    found, equiv = statuses(), equivalent()
    if not found:
        print("no mutmut results: run `make mutate` (or `mutmut run`) first")
        return 1
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors = []
    for name, status in sorted(found.items()):
        key = "equivalent" if status != "killed" and name in equiv else status
        by_module[module_of(name)][key] += 1
        if key in ("survived", "no tests", "timeout", "suspicious"):
            survivors.append(f"  {status:<10} {name}")
    total: Counter[str] = Counter()
    print(
        f"{'module':<28}{'mutants':>8}{'unrun':>7}{'killed':>8}{'equiv':>7}{'alive':>7}"
        f"{'kill rate':>11}"
    )
    for module, c in sorted(by_module.items()):
        total.update(c)
        print(_row(module, c))
    print(_row("all", total))
    if survivors:
        print("not killed and not marked equivalent:")
        print("\n".join(survivors))
    return 0


def _row(label: str, c: Counter[str]) -> str:
    """Kill rate over the mutants that ran and are not equivalent ("unrun": not checked yet)."""
    n = sum(c.values())
    unrun = c["not checked"]
    counted = n - c["equivalent"] - unrun
    rate = f"{100 * c['killed'] / counted:.1f}%" if counted else "-"
    alive = counted - c["killed"]
    return f"{label:<28}{n:>8}{unrun:>7}{c['killed']:>8}{c['equivalent']:>7}{alive:>7}{rate:>11}"


if __name__ == "__main__":
    sys.exit(main())
