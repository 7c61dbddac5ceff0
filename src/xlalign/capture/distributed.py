"""Data-parallel extraction: which process does which batches, and the little they must agree on.

``torchrun --nproc_per_node N -m xlalign extract ...`` and
``accelerate launch --multi_gpu --num_processes N -m xlalign extract ...`` start N copies of the
same command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` in their
environment (``MASTER_ADDR``/``MASTER_PORT`` too). :func:`xlalign.capture.extract` reads them
through :func:`launch_env`; with one process nothing here runs and extraction is unchanged.

How a launch of N ranks writes one run (see docs/scaling.md):

- Every rank loads the model (on ``cuda:LOCAL_RANK``, or its share of the node's GPUs with
  ``--device-map``), tokenises the corpus and builds the same length-sorted batch plan.
- Rank 0 alone lays out (or, with ``--resume``, checks) the run folder; the others open the
  same array files. Batches are dealt round-robin over the ranks (:func:`assign_batches`), so
  each prompt runs in exactly the batch it runs in alone, hence its vectors are bit-identical
  to a single-process run on the same kind of device and thread count.
- Each rank writes its rows into the shared ``.npy`` files by corpus index and records its
  batches in its own ``progress/rank-<r>-of-<n>.json``; no two processes ever write the same
  file or the same rows. The run is complete when every batch of every language is recorded;
  rank 0 then writes the manifest with ``"complete": true`` and the others return once it has.
- A rank that dies loses at most its unrecorded batches. ``--resume`` (with any number of
  processes, one included) reads every progress file and deals out only what is missing.

The ranks talk through a gloo process group (a CPU rendezvous that works beside CUDA) only at
start-up: rank 0 broadcasts whether the folder is usable and which batches are already done.
The end is a poll of files, not a barrier, so a rank with more work never times the others out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from xlalign.errors import XlalignError

#: Seconds the start-up rendezvous waits for slow ranks (model loading included); override with
#: ``XLALIGN_DIST_TIMEOUT_S``.
DEFAULT_TIMEOUT_S = 7200.0

#: How units of work are dealt to ranks (``--shard-by``).
SHARD_BY = ("batch", "language")


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in a launch: ``rank`` of ``world_size``, ``local_rank`` on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def tag(self) -> str:
        """``rank-<r>-of-<n>``: the name of this rank's progress file."""
        return f"rank-{self.rank}-of-{self.world_size}"


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """The launch this process belongs to, from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``...

    As torchrun and ``accelerate launch`` set them; absent (a plain ``xlalign extract``), one
    process of one.
    """
    env = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise XlalignError(f"environment variable {name}={raw!r} is not an integer") from None

    world = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    local_rank = number("LOCAL_RANK", rank)
    local_world = number("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world:
        raise XlalignError(f"RANK={rank} and WORLD_SIZE={world} do not describe a launch")
    if not 0 <= local_rank < max(local_world, 1):
        raise XlalignError(f"LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world}")
    return LaunchEnv(rank, world, local_rank, local_world)


# ---------------------------------------------------------------------------------------------
# the process group (start-up only)


class Group:
    """The launch's gloo process group, used for two collectives at start-up.

    Created only when ``WORLD_SIZE > 1``; reuses a default group someone else initialised
    (e.g. an ``Accelerator`` in the caller's script) and then leaves it alone at exit.
    """

    def __init__(self, env: LaunchEnv, timeout_s: float | None = None) -> None:
        import torch.distributed as dist

        self.env = env
        self._owned = False
        if not dist.is_available():
            raise XlalignError("this torch build has no torch.distributed; launch one process")
        if not dist.is_initialized():
            if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
                raise XlalignError(
                    f"WORLD_SIZE={env.world_size} but MASTER_ADDR/MASTER_PORT are not set: "
                    "start the ranks with torchrun or accelerate launch"
                )
            timeout = timeout_s or float(
                os.environ.get("XLALIGN_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)
            )
            # gloo: a CPU rendezvous; the ranks exchange flags and small lists, never tensors.
            dist.init_process_group(
                "gloo",
                rank=env.rank,
                world_size=env.world_size,
                timeout=timedelta(seconds=timeout),
            )
            self._owned = True
        self._group = dist.new_group(backend="gloo") if not self._owned else None

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        import torch.distributed as dist

        box = [obj if self.env.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self._group)

    def close(self) -> None:
        import torch.distributed as dist

        if self._owned and dist.is_initialized():
            dist.destroy_process_group()
        self._owned = False


def run_on_main(group: Group, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only; its result there, None on the other ranks.

    A user-fixable error on rank 0 (:class:`XlalignError` or a subclass) is raised on every
    rank with the same message, so every process of the launch stops with the same line.
    """
    result: Any = None
    status: tuple[str, Any] = ("ok", None)
    if group.env.is_main:
        try:
            result = fn()
        except XlalignError as e:
            status = ("error", (type(e), str(e)))
        except BaseException:
            group.broadcast(("crash", None))  # release the waiting ranks before dying
            raise
    kind, payload = group.broadcast(status)
    if kind == "crash":
        raise XlalignError("rank 0 failed while preparing the run folder (see its traceback)")
    if kind == "error":
        cls, message = payload
        raise cls(message)
    return result


# ---------------------------------------------------------------------------------------------
# who does what


def assign_batches(
    batches: Mapping[str, Sequence[Any]],
    done: Mapping[str, set[int]],
    env: LaunchEnv,
    shard_by: str = "batch",
) -> dict[str, set[int]]:
    """Batch indices per language that rank ``env.rank`` runs: the work not yet ``done``, dealt.

    ``shard_by="batch"``: every missing batch, in language order then plan order (longest
    first), goes to rank ``k % world_size`` for the k-th; each rank gets as many long batches as
    short ones. ``shard_by="language"``: whole languages are dealt out, so each array file is
    written by one process only (for file systems without coherent shared writes; ranks beyond
    the number of languages get nothing). The result depends only on its arguments, so every
    rank computes the same partition.
    """
    if shard_by not in SHARD_BY:
        raise XlalignError(f"--shard-by must be one of {', '.join(SHARD_BY)}, got '{shard_by}'")
    mine: dict[str, set[int]] = {lang: set() for lang in batches}
    if shard_by == "language":
        for k, lang in enumerate(batches):
            if k % env.world_size == env.rank:
                mine[lang] = {i for i in range(len(batches[lang])) if i not in done.get(lang, ())}
        return mine
    k = 0
    for lang, plan in batches.items():
        for i in range(len(plan)):
            if i in done.get(lang, ()):
                continue
            if k % env.world_size == env.rank:
                mine[lang].add(i)
            k += 1
    return mine


def rank_device(env: LaunchEnv, device: str) -> str:
    """The device this rank runs on: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` when GPUs exist.

    An explicit ``cuda:N`` or ``cpu`` is kept as given.
    """
    import torch

    if not env.distributed or device not in ("auto", "cuda"):
        return device
    if not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    n = torch.cuda.device_count()
    if env.local_rank >= n:
        raise XlalignError(
            f"LOCAL_RANK={env.local_rank} but this host has {n} GPU(s): launch at most {n} "
            "processes per host (--nproc_per_node), or use --device-map with fewer processes"
        )
    return f"cuda:{env.local_rank}"


def rank_gpus(env: LaunchEnv, n_gpus: int) -> list[int]:
    """The GPUs a rank may spread a model over with ``--device-map``: its share of the host.

    With ``LOCAL_WORLD_SIZE = p`` processes on a host of ``g`` GPUs, rank ``r`` gets GPUs
    ``r*g/p .. (r+1)*g/p - 1`` (``g`` must be a multiple of ``p``), e.g. 4 processes on 8 GPUs
    for a 70B model in bfloat16: two 80 GB GPUs each.
    """
    if not env.distributed:
        return list(range(n_gpus))
    per = n_gpus // max(env.local_world_size, 1)
    if per < 1 or n_gpus % env.local_world_size:
        raise XlalignError(
            f"--device-map with {env.local_world_size} processes on a host of {n_gpus} GPU(s): "
            "the GPUs must divide evenly among the processes (e.g. 8 GPUs, 4 processes)"
        )
    return list(range(env.local_rank * per, (env.local_rank + 1) * per))


def rank_max_memory(
    env: LaunchEnv, max_memory: dict[int | str, int | str] | None
) -> dict[int | str, int | str] | None:
    """``max_memory`` for this rank's ``--device-map``: only its own GPUs, plus CPU and disk.

    Without ``max_memory`` Accelerate would spread every rank's copy over all GPUs of the host;
    here each rank is limited to :func:`rank_gpus` (their free memory, as Accelerate measures
    it) plus the CPU. A ``max_memory`` the user gave is filtered the same way.
    """
    import torch

    if not env.distributed or not torch.cuda.is_available():
        return max_memory
    mine = set(rank_gpus(env, torch.cuda.device_count()))
    if max_memory is None:
        from accelerate.utils import get_max_memory

        max_memory = dict(get_max_memory())
    return {k: v for k, v in max_memory.items() if not isinstance(k, int) or k in mine}


def parse_max_memory(spec: str | None) -> dict[int | str, int | str] | None:
    """``"0=70GiB,1=70GiB,cpu=200GiB"`` -> ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}``.

    Keys are GPU indices, ``cpu`` or ``disk``; values are what Accelerate accepts (an integer
    number of bytes or a size such as ``70GiB``).
    """
    if spec is None:
        return None
    out: dict[int | str, int | str] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise XlalignError(
                f"--max-memory item '{item}' is not DEVICE=SIZE (e.g. 0=70GiB,cpu=200GiB)"
            )
        if key.isdigit():
            out[int(key)] = int(value) if value.isdigit() else value
        elif key in ("cpu", "disk", "mps"):
            out[key] = int(value) if value.isdigit() else value
        else:
            raise XlalignError(f"--max-memory device '{key}' unknown: use GPU indices, cpu or disk")
    if not out:
        raise XlalignError("--max-memory is empty: give e.g. 0=70GiB,cpu=200GiB")
    return out


def wait_until(
    ready: Callable[[], bool], what: str, poll_s: float = 1.0, timeout_s: float | None = None
) -> None:
    """Poll ``ready()`` every ``poll_s`` seconds until it is true (``timeout_s``: then raise)."""
    start = time.monotonic()
    while not ready():
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise XlalignError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
