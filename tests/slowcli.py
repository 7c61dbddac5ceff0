"""The real ``xlalign`` CLI, run as a child script with every batch flushed and slowed down.

Tests write :data:`SLOW_CLI` to a file and run it with ``python script.py <cli args>`` (or under
``torchrun``), so they can kill the process at a known state. ``XLALIGN_TEST_DELAY`` is the
pause after each batch (seconds); with ``XLALIGN_TEST_PIDS`` set, each process leaves its pid
in that folder as ``rank<RANK>`` so a test knows which process is which rank.

:data:`GATED_CLI` is the real CLI paused at a chosen function until the test lets it go: with
``XLALIGN_TEST_GATE=<folder>`` and ``XLALIGN_TEST_GATE_AT=<module>:<function or Class.method>``, its first call (its n-th with
``XLALIGN_TEST_GATE_CALL=n``) writes ``<folder>/reached`` (the pid) and waits for
``<folder>/go`` before it runs. No
sleeps decide the outcome: the test acts while the process is known to be paused, holding
whatever locks it took before the call.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

GATED_CLI = """
import importlib, os, sys, time
from pathlib import Path

gate = Path(os.environ["XLALIGN_TEST_GATE"])
module, name = os.environ["XLALIGN_TEST_GATE_AT"].split(":")
after = int(os.environ.get("XLALIGN_TEST_GATE_CALL", "1"))
target = importlib.import_module(module)
*owner, name = name.split(".")
for part in owner:
    target = getattr(target, part)
real = getattr(target, name)
calls = []

def gated(*args, **kwargs):
    calls.append(1)
    if len(calls) == after and not (gate / "reached").exists():
        (gate / "reached").write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while not (gate / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return real(*args, **kwargs)

setattr(target, name, gated)
from xlalign.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_gated(
    tmp: Path, at: str, args: list[str], call: int = 1
) -> tuple[subprocess.Popen, Path]:
    """Start ``xlalign ARGS`` paused before the ``call``-th call of ``at``; returns once it is
    paused there (or raises)."""
    gate = tmp / f"gate-{time.monotonic_ns()}"
    gate.mkdir()
    script = gate / "gated_cli.py"
    script.write_text(GATED_CLI)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        XLALIGN_TEST_GATE=str(gate),
        XLALIGN_TEST_GATE_AT=at,
        XLALIGN_TEST_GATE_CALL=str(call),
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (gate / "reached").exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"{args} ended before {at}: {out}{err}")
        assert time.monotonic() < deadline, f"{args} never reached {at}"
        time.sleep(0.02)
    return proc, gate


def finish_gated(proc: subprocess.Popen, gate: Path) -> tuple[int, str, str]:
    """Let the paused process go on; its return code, stdout and stderr."""
    (gate / "go").write_text("")
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


SLOW_CLI = """
import os, sys, time
from pathlib import Path
import xlalign.store as store

delay = float(os.environ.get("XLALIGN_TEST_DELAY", "0"))
if "XLALIGN_TEST_PIDS" in os.environ:
    rank = os.environ.get("RANK", "0")
    Path(os.environ["XLALIGN_TEST_PIDS"], f"rank{rank}").write_text(str(os.getpid()))
real_mark_done = store.RunWriter.mark_done

def mark_done(self, lang, batch):
    self.flush_interval_s = 0.0
    real_mark_done(self, lang, batch)
    time.sleep(delay)

store.RunWriter.mark_done = mark_done
from xlalign.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: The real CLI that stops after ``XLALIGN_TEST_STOP_AFTER`` batches of its own process (unset
#: or 0: never) and waits there until it is killed or interrupted: a test that kills it "after
#: k batches" then sees exactly k done, however loaded the machine is (no race between the
#: child's batches and the parent's polling). ``XLALIGN_TEST_PIDS`` as in :data:`SLOW_CLI`.
STOP_AFTER_CLI = """
import os, sys, time
from pathlib import Path
import xlalign.store as store

stop_after = int(os.environ.get("XLALIGN_TEST_STOP_AFTER", "0"))
if "XLALIGN_TEST_PIDS" in os.environ:
    rank = os.environ.get("RANK", "0")
    Path(os.environ["XLALIGN_TEST_PIDS"], f"rank{rank}").write_text(str(os.getpid()))
real_mark_done = store.RunWriter.mark_done
done = 0

def mark_done(self, lang, batch):
    global done
    self.flush_interval_s = 0.0
    real_mark_done(self, lang, batch)
    done += 1
    while stop_after and done >= stop_after:
        time.sleep(0.05)

store.RunWriter.mark_done = mark_done
from xlalign.cli import main
sys.exit(main(sys.argv[1:]))
"""
