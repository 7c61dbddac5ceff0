"""A run killed while its folder is being laid out resumes, and --overwrite clears it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import xlalign
import xlalign.store.writer as store
from xlalign.errors import RunError


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after the raise runs, cleanup handlers aside."""


@pytest.mark.parametrize("kill_at", [1, 3])
def test_kill_during_layout_resumes_and_overwrites(tiny_models, problems, tmp_path, monkeypatch,
                                                   kill_at):  # fmt: skip
    corpus = problems.head(8)
    kw = dict(sites="embed,L0", pools="last,mean", batch_size=4, progress=False)
    model = str(tiny_models["qwen2"])
    real = store._save_npy
    calls = []

    def dying_save(path, array):
        calls.append(path)
        if len(calls) == kill_at:
            raise _Killed
        real(path, array)

    whole = xlalign.extract(model, corpus, "zh,en", output=tmp_path / "whole", **kw)
    for mode in ("resume", "overwrite"):
        out = tmp_path / mode
        calls.clear()
        monkeypatch.setattr(store, "_save_npy", dying_save)
        with pytest.raises(_Killed):
            xlalign.extract(model, corpus, "zh,en", output=out, **kw)
        monkeypatch.undo()
        manifest = json.loads((out / "manifest.json").read_text())  # written first
        assert manifest["laid_out"] is False and manifest["complete"] is False
        with pytest.raises(RunError, match="incomplete"):
            xlalign.load_run(out)
        with pytest.raises(RunError, match="--overwrite"):  # a plain extract still refuses
            xlalign.extract(model, corpus, "zh,en", output=out, **kw)
        run = xlalign.extract(model, corpus, "zh,en", output=out, **{mode: True}, **kw)
        assert run.complete and run.manifest["laid_out"] is True
        for key in whole:
            assert np.array_equal(run[key], whole[key]), (mode, key)


def test_folder_with_only_lock_and_temp_files_counts_as_empty(tiny_models, problems, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".xlalign.lock").write_text("")
    (out / ".manifest.json.abc123.tmp").write_text("{")  # killed inside the atomic write
    run = xlalign.extract(str(tiny_models["qwen2"]), problems.head(4), "zh,en", sites="embed",
                          batch_size=4, output=out, progress=False)  # fmt: skip
    assert run.complete
