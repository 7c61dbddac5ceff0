"""The real ``xlalign`` CLI, run as a child script with every batch flushed and slowed down.

Tests write :data:`SLOW_CLI` to a file and run it with ``python script.py <cli args>`` (or under
``torchrun``), so they can kill the process at a known state. ``XLALIGN_TEST_DELAY`` is the
pause after each batch (seconds); with ``XLALIGN_TEST_PIDS`` set, each process leaves its pid
in that folder as ``rank<RANK>`` so a test knows which process is which rank.
"""

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
GATED_CLI = """
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
