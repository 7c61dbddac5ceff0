"""Run mutmut's mutants one after another in this process, without forking (see docs/testing.md).

``mutmut run`` forks each mutant's pytest from a process that has already run torch; on the
shared VM such children hang in a futex (a lock copied mid-held). This runner uses the
``mutants/`` tree that ``mutmut run`` generated (run it once, even if interrupted): for every
mutant whose name matches a glob it sets ``MUTANT_UNDER_TEST`` (mutmut's trampolines read it
on each call) and runs ``pytest.main`` on the given tests, in-process. Exit code 1 (a test
failed) is *killed*, 0 *survived*; a mutant that runs past ``--timeout`` seconds is stopped by
``SIGALRM`` and counted *timeout*. Run from the folder holding ``mutants/``:

    cd <repo> && PYTHONPATH=mutants/src python tests/mutation_inprocess.py \\
        'xlalign.data.lexical.*' --timeout 120 -- tests/test_lexical.py -k bag

Results are appended to ``mutants/inprocess.jsonl`` (name, status, seconds); ``--summary``
prints the counts per function from that file, net of ``tests/mutation_equivalent.txt``.
Module- and session-scoped fixtures are rebuilt for every mutant, unless named in
``--keep-fixtures NAME[,NAME]``: those are built once, with no mutant active, and their values
are reused by every mutant after (only fixtures that return a value, not ``yield``, and whose
value no test changes: extracted runs, tiny models, corpora; never one that calls the mutated
code). Each mutant gets its own ``--basetemp``, removed after it; the kept values live in a
separate one (``kept``), removed when the runner ends.
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

EQUIVALENT = Path(__file__).with_name("mutation_equivalent.txt")
LOG = Path("mutants") / "inprocess.jsonl"


class _Timeout(Exception):
    pass


def _names(pattern: str) -> list[str]:
    """The mutants matching ``pattern``: globs separated by commas (any of them)."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    names = [line.strip().rpartition(": ")[0] for line in out.splitlines() if ": " in line]
    globs = pattern.split(",")
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def _equivalent() -> set[str]:
    if not EQUIVALENT.exists():
        return set()
    return {
        line.partition("#")[0].strip()
        for line in EQUIVALENT.read_text(encoding="utf-8").splitlines()
        if line.partition("#")[0].strip()
    }


class _KeepFixtures:
    """A pytest plugin: the named fixtures' first values, reused by every later session."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.values: dict[tuple[str, str, str], object] = {}

    def _key(self, fixturedef: Any, request: Any) -> tuple[str, str, str] | None:
        if fixturedef.argname not in self.names or fixturedef.scope not in ("module", "session"):
            return None
        if inspect.isgeneratorfunction(fixturedef.func):  # its teardown ran with its session
            return None
        return (fixturedef.baseid, fixturedef.argname, repr(fixturedef.cache_key(request)))

    def plugins(self) -> list[object]:
        return [_Reuse(self), _Store(self)]


class _Reuse:
    def __init__(self, keep: _KeepFixtures) -> None:
        self.keep = keep

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> object:
        key = self.keep._key(fixturedef, request)
        if key is None or key not in self.keep.values:
            return None  # pytest builds it
        value = self.keep.values[key]
        fixturedef.cached_result = (value, fixturedef.cache_key(request), None)
        return value


class _Store:
    def __init__(self, keep: _KeepFixtures) -> None:
        self.keep = keep

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Any:
        value = yield
        key = self.keep._key(fixturedef, request)
        if key is not None and value is not None:
            self.keep.values.setdefault(key, value)
        return value


def run(pattern: str, tests: list[str], timeout: int, keep: set[str] | None = None) -> None:
    from mutmut.mutation.trampoline import set_mutant_under_test

    fired: list[bool] = []

    def alarm(_sig: int, _frame: object) -> None:
        fired.append(True)  # pytest may catch the exception as a test failure: say so anyway
        raise _Timeout

    signal.signal(signal.SIGALRM, alarm)
    names = _names(pattern)
    sys.path.insert(0, os.path.abspath("mutants/src"))  # the trampolined source, first
    os.chdir("mutants")
    log = Path("inprocess.jsonl")
    kept = _KeepFixtures(keep or set())
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"mutation-inprocess-{os.getpid()}"
    args = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "--tb=no", *tests]
    base.mkdir(parents=True, exist_ok=True)  # pytest makes --basetemp, not its parents
    if keep:  # build the kept fixtures once, with no mutant active
        set_mutant_under_test("none.none")
        rc = pytest.main([*args, f"--basetemp={base / 'kept'}"], plugins=kept.plugins())
        if int(rc) != 0:
            raise SystemExit(
                f"the tests fail with no mutant active (exit {int(rc)}): fix them first"
            )
        print(f"kept {len(kept.values)} fixture values: {sorted(k[1] for k in kept.values)}")
    for i, name in enumerate(names):
        set_mutant_under_test(name)  # os.environ too; and survives a test that clears it
        fired.clear()
        start = time.monotonic()
        signal.alarm(timeout)
        tmp = base / str(i)
        try:
            rc = pytest.main([*args, f"--basetemp={tmp}"], plugins=kept.plugins())
            status = {0: "survived", 1: "killed"}.get(int(rc), f"rc {int(rc)}")
        except _Timeout:
            status = "timeout"
        finally:
            signal.alarm(0)
            shutil.rmtree(tmp, ignore_errors=True)
        if fired:
            status = "timeout"
        took = round(time.monotonic() - start, 1)
        with log.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"name": name, "status": status, "seconds": took}) + "\n")
        print(f"MUTANT {name}: {status} ({took} s)", flush=True)
    shutil.rmtree(base, ignore_errors=True)


def summary() -> None:
    last: dict[str, dict] = {}
    for line in LOG.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        last[rec["name"]] = rec  # a later run of a mutant replaces an earlier one
    equiv = _equivalent()
    by_fn: dict[str, Counter[str]] = defaultdict(Counter)
    seconds: Counter[str] = Counter()
    for name, rec in last.items():
        fn = name.rpartition("__mutmut_")[0]
        status = "equivalent" if rec["status"] == "survived" and name in equiv else rec["status"]
        by_fn[fn][status] += 1
        seconds[fn] += rec["seconds"]
    for fn, c in sorted(by_fn.items()):
        print(f"{fn:<60} {sum(c.values()):>4} {dict(c)} {seconds[fn]:.0f} s")
    for name, rec in sorted(last.items()):
        if rec["status"] not in ("killed",) and name not in equiv:
            print(f"  {rec['status']:<9} {name}")
    # per module: every mutant mutmut generated, and what became of it
    modules: dict[str, Counter[str]] = defaultdict(Counter)
    for name in _names("*"):
        module = name.partition(".x_")[0].partition(".xǁ")[0]
        rec = last.get(name)
        if rec is None:
            status = "not run"
        elif rec["status"] == "survived" and name in equiv:
            status = "equivalent"
        else:
            status = rec["status"]
        modules[module][status] += 1
    cols = ("killed", "equivalent", "survived", "timeout", "not run")
    print(f"{'module':<32} {'mutants':>7} " + " ".join(f"{c:>10}" for c in cols))
    for module, c in sorted(modules.items()):
        if sum(c[k] for k in cols[:4]):
            print(f"{module:<32} {sum(c.values()):>7} " + " ".join(f"{c[k]:>10}" for k in cols))


def main() -> int:
    argv = sys.argv[1:]
    tests = argv[argv.index("--") + 1 :] if "--" in argv else []  # pytest's own arguments
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser()
    p.add_argument("pattern", nargs="?")
    p.add_argument("--timeout", type=int, default=120)
    p.add_argument("--summary", action="store_true")
    p.add_argument("--keep-fixtures", default="", help="fixtures built once (comma-separated)")
    a = p.parse_args(argv)
    if a.summary:
        summary()
        return 0
    run(a.pattern, tests, a.timeout, {n for n in a.keep_fixtures.split(",") if n})
    return 0


if __name__ == "__main__":
    sys.exit(main())
