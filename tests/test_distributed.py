"""Data-parallel extraction: real torchrun / accelerate launch processes on the CPU (gloo).

The store a 2-process launch writes must equal, array for array and token file for token file,
the store of one process; a launch whose rank is SIGKILLed part-way must resume to it too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import xlalign
from slowcli import STOP_AFTER_CLI
from xlalign.capture.batching import plan_batches
from xlalign.capture.distributed import (
    LaunchEnv,
    assign_batches,
    launch_env,
    parse_max_memory,
    rank_gpus,
)
from xlalign.data.corpus import ParallelCorpus
from xlalign.errors import XlalignError
from xlalign.store.writer import read_progress

BIN = Path(sys.executable).parent
ROWS = 40
BATCH = 4  # 10 batches per language, 20 in all


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    # One intra-op thread per rank, as torchrun sets by default; the reference run uses the same.
    return dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", **extra
    )


@pytest.fixture(scope="module")
def corpus_file(problems, tmp_path_factory) -> Path:
    small = ParallelCorpus(
        problems.ids[:ROWS],
        {lang: problems.texts[lang][:ROWS] for lang in problems.languages},
        {k: v[:ROWS] for k, v in problems.meta.items()},
    )
    return small.to_jsonl(tmp_path_factory.mktemp("dp") / "data.jsonl")


def _args(model: Path, data: Path, out: Path) -> list[str]:
    return [
        "extract", "--model", str(model), "--data", str(data), "--langs", "zh,en",
        "--sites", "all", "--pool", "last,mean,tokens", "--batch-size", str(BATCH),
        "--device", "cpu", "--no-progress", "-o", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tiny_models, corpus_file, tmp_path_factory) -> xlalign.store.Run:
    """The single-process run, with the thread count each rank has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return xlalign.extract(
            str(tiny_models["qwen2"]), corpus_file, "zh,en", sites="all",
            pools="last,mean,tokens", batch_size=BATCH, device="cpu",
            output=tmp_path_factory.mktemp("dp") / "single", progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def _npy_files(root: Path) -> Iterator[Path]:
    for p in sorted(root.rglob("*.npy")):
        yield p.relative_to(root)


def assert_same_store(a: Path, b: Path) -> None:
    """Every array and token file of run ``a`` equals ``b``'s (np.array_equal), and nothing else."""
    files = list(_npy_files(b))
    assert files and files == list(_npy_files(a))
    for rel in files:
        assert np.array_equal(np.load(a / rel), np.load(b / rel)), rel
    run = xlalign.load_run(a)
    assert run.complete and run.ids == xlalign.load_run(b).ids


def test_torchrun_two_ranks_write_the_single_process_store(
    tiny_models, corpus_file, reference, tmp_path
):
    out = tmp_path / "dp"
    cmd = [
        str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "xlalign",
        *_args(tiny_models["qwen2"], corpus_file, out),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # one summary line, from rank 0
    assert_same_store(out, reference.path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data_parallel"]["world_size"] == 2
    ranks = sorted(s["rank"] for s in manifest["sessions"])
    assert ranks == [0, 1]
    # each rank ran its own half of the 20 batches, recorded in its own progress file
    per_rank = [
        json.loads(p.read_text())["done"] for p in sorted((out / "progress").glob("*.json"))
    ]
    assert len(per_rank) == 2
    assert sum(s["prompts"] for s in manifest["sessions"]) == 2 * ROWS

    # rank 0's refusal reaches every rank: each stops with the same one-line error
    again = subprocess.run([*cmd, "--resume"], env=_env(), capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert again.returncode != 0
    assert again.stderr.count("xlalign: error:") == 2, again.stderr[-3000:]
    assert "already holds a complete run; nothing to resume" in again.stderr


@pytest.mark.slow
def test_accelerate_launch_writes_the_single_process_store(
    tiny_models, corpus_file, reference, tmp_path
):
    out = tmp_path / "acc"
    cmd = [
        str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", "xlalign",
        *_args(tiny_models["qwen2"], corpus_file, out),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_store(out, reference.path)


def _rank_done(out: Path, rank: int) -> int:
    try:
        progress = json.loads((out / "progress" / f"rank-{rank}-of-2.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 0
    return sum(len(v) for v in progress["done"].values())


def test_killed_rank_resumes_to_the_single_process_store(
    tiny_models, corpus_file, reference, tmp_path
):
    script = tmp_path / "slow_cli.py"
    script.write_text(STOP_AFTER_CLI)  # each rank waits after its 3rd batch: no race with the kill
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "killed"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script)]
    args = _args(tiny_models["qwen2"], corpus_file, out)
    env = _env(XLALIGN_TEST_STOP_AFTER="3", XLALIGN_TEST_PIDS=str(pids))
    launch = subprocess.Popen(
        [*cmd, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 600  # a hang guard only: rank 1 waits at its 3rd batch
    try:
        while _rank_done(out, 1) < 3:  # rank 1 has 10 batches to do
            assert launch.poll() is None, launch.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "rank 1 made no progress in 10 minutes"
            time.sleep(0.05)
        os.kill(int((pids / "rank1").read_text()), signal.SIGKILL)
    finally:
        launch.communicate(timeout=60)
    assert launch.returncode != 0  # torchrun stops the launch when a rank dies
    done_at_kill = sum(len(v) for v in read_progress(out).values())
    assert 3 <= done_at_kill <= 6  # each rank stops at its 3rd batch
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    with pytest.raises(XlalignError, match=r"incomplete.*--resume"):
        xlalign.load_run(out)

    resumed = subprocess.run(
        [*cmd, *args, "--resume"],
        env=_env(XLALIGN_TEST_PIDS=str(pids)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_store(out, reference.path)
    sessions = json.loads((out / "manifest.json").read_text())["sessions"]
    launches = {s["launch"] for s in sessions}
    assert len(launches) == 2  # the killed launch's sessions are kept in the history
    resumed_prompts = sum(s.get("prompts", 0) for s in sessions if s.get("finished"))
    assert resumed_prompts < 2 * ROWS  # the relaunch ran only the missing batches


def test_one_process_finishes_a_data_parallel_run(tiny_models, corpus_file, reference, tmp_path):
    """Ranks 0 and 1 of a killed 2-process launch left 7 of 20 batches; `--resume` alone ends it."""
    out = tmp_path / "partial"
    shutil.copytree(reference.path, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(complete=False, sessions=[])
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "progress.json").unlink()
    plans = {lang: plan_batches(reference.lengths(lang), BATCH) for lang in reference.languages}
    kept = {0: {"zh": [0, 2, 4, 6], "en": [0]}, 1: {"zh": [1, 3], "en": []}}
    for lang, plan in plans.items():  # rows of batches nobody recorded are lost
        lost = np.concatenate(
            [b for i, b in enumerate(plan) if i not in kept[0][lang] + kept[1][lang]]
        )
        for arr in (out / "arrays" / lang).rglob("*.npy"):
            if arr.name == "tokens.npy":
                continue
            mm = np.load(arr, mmap_mode="r+")
            mm[lost] = 0
            mm.flush()
    (out / "progress").mkdir()
    for rank, done in kept.items():
        record = {"done": done, "sessions": [{"rank": rank, "launch": "x", "prompts": 8}]}
        (out / "progress" / f"rank-{rank}-of-2.json").write_text(json.dumps(record))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = xlalign.extract(
            str(tiny_models["qwen2"]), corpus_file, "zh,en", sites="all",
            pools="last,mean,tokens", batch_size=BATCH, device="cpu", output=out,
            resume=True, progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    for key in reference:
        assert np.array_equal(run[key], reference[key]), key
    sessions = run.manifest["sessions"]
    assert [s.get("rank") for s in sessions].count(None) == 1 and len(sessions) == 3
    assert sessions[-1]["prompts"] == 2 * ROWS - 7 * BATCH  # only the 13 missing batches ran


# ---------------------------------------------------------------------------------------------
# the pure parts


def test_launch_env_reads_torchrun_variables():
    assert launch_env({}) == LaunchEnv(0, 1, 0, 1)
    env = launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (env.rank, env.world_size, env.local_rank, env.tag) == (3, 8, 1, "rank-3-of-8")
    with pytest.raises(XlalignError, match="RANK=2 and WORLD_SIZE=2"):
        launch_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(XlalignError, match="WORLD_SIZE='two'"):
        launch_env({"WORLD_SIZE": "two"})


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_batches_are_dealt_once_each_and_evenly(world):
    batches = {"zh": list(range(10)), "en": list(range(9)), "fr": list(range(4))}
    done = {"zh": {0, 1, 5}, "en": set(), "fr": {3}}
    shares = [assign_batches(batches, done, LaunchEnv(r, world)) for r in range(world)]
    for lang, plan in batches.items():
        got = [i for share in shares for i in share[lang]]
        assert sorted(got) == sorted(set(range(len(plan))) - done[lang])  # each missing once
    sizes = [sum(len(v) for v in share.values()) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def test_language_sharding_gives_each_file_one_writer():
    batches = {"zh": [0] * 5, "en": [0] * 5, "fr": [0] * 5}
    shares = [assign_batches(batches, {}, LaunchEnv(r, 2), "language") for r in range(2)]
    owners = {lang: [r for r in range(2) if shares[r][lang]] for lang in batches}
    assert owners == {"zh": [0], "en": [1], "fr": [0]}
    with pytest.raises(XlalignError, match="--shard-by"):
        assign_batches(batches, {}, LaunchEnv(0, 2), "row")


def test_max_memory_and_gpu_shares():
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {
        0: "70GiB", 1: "70GiB", "cpu": "200GiB"
    }  # fmt: skip
    assert parse_max_memory("cpu=1000000") == {"cpu": 1000000}
    with pytest.raises(XlalignError, match="DEVICE=SIZE"):
        parse_max_memory("70GiB")
    with pytest.raises(XlalignError, match="device 'gpu0' unknown"):
        parse_max_memory("gpu0=70GiB")
    assert rank_gpus(LaunchEnv(2, 8, 2, 4), 8) == [4, 5]
    with pytest.raises(XlalignError, match="divide evenly"):
        rank_gpus(LaunchEnv(0, 3, 0, 3), 8)


def test_progress_is_the_union_of_every_rank_file(tmp_path):
    (tmp_path / "progress").mkdir()
    (tmp_path / "progress.json").write_text(json.dumps({"done": {"zh": [0]}}))
    (tmp_path / "progress" / "rank-0-of-2.json").write_text(json.dumps({"done": {"zh": [2]}}))
    (tmp_path / "progress" / "rank-1-of-2.json").write_text(
        json.dumps({"done": {"zh": [1], "en": [0]}})
    )
    assert read_progress(tmp_path) == {"zh": [0, 1, 2], "en": [0]}
