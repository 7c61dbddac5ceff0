"""Run folders: layout, manifest, the Run reader, refusal to overwrite, resume, export."""

from __future__ import annotations

import json

import numpy as np
import pytest

import xlalign
from faults import Crash, crash_after
from xlalign.errors import XlalignError
from xlalign.store.run import export_npz, load_run

MANIFEST_KEYS = {
    "format", "format_version", "complete", "model", "revision", "weights_fingerprint",
    "architecture", "family", "n_layers", "d_model", "dtype", "device", "random_init_seed",
    "has_additive_positions", "tokenizer_name", "adds_bos", "bos_token", "sites", "site_info",
    "pools", "pool_semantics", "pool_info", "languages", "n_rows", "ids", "meta_columns",
    "corpus_source", "corpus_fingerprint", "padding_side", "batch_size", "n_batches", "versions", "timings",
    "sessions", "zero_norm_vectors", "n_zero_norm_vectors",
}  # fmt: skip


@pytest.fixture(scope="module")
def small(problems):
    return problems.head(30)


@pytest.fixture(scope="module")
def run(tiny_models, small, tmp_path_factory):
    return xlalign.extract(
        str(tiny_models["qwen2"]), small, ["zh", "en"], sites="all", pools="last,mean,tokens",
        batch_size=8, output=tmp_path_factory.mktemp("runs") / "q", progress=False,
    )  # fmt: skip


def test_layout_is_plain_npy_in_corpus_order(run, small):
    root = run.path
    assert (root / "manifest.json").is_file() and (root / "meta.json").is_file()
    assert (root / "tokenizer").is_dir()
    tok = run.tokenizer()
    for lang in ("zh", "en"):
        ids = np.load(root / "tokens" / f"{lang}.ids.npy", allow_pickle=False)
        offsets = np.load(root / "tokens" / f"{lang}.offsets.npy", allow_pickle=False)
        special = np.load(root / "tokens" / f"{lang}.special.npy", allow_pickle=False)
        assert ids.dtype == np.int32 and offsets.dtype == np.int64 and special.dtype == bool
        assert offsets.shape == (len(small) + 1,) and offsets[0] == 0
        assert ids.shape == special.shape == (offsets[-1],)
        for i, text in enumerate(small.text(lang)):  # corpus order, not length order
            assert ids[offsets[i] : offsets[i + 1]].tolist() == tok(text)["input_ids"]
        for site in run.sites:
            for pool in ("last", "mean"):
                a = np.load(root / "arrays" / lang / site / f"{pool}.npy", allow_pickle=False)
                assert a.dtype == np.float32 and a.shape == (len(small), 32)
            t = np.load(root / "arrays" / lang / site / "tokens.npy", allow_pickle=False)
            assert t.shape == (offsets[-1], 32)
            # the last pool is the last token's vector
            np.testing.assert_array_equal(
                np.load(root / "arrays" / lang / site / "last.npy")[3], t[offsets[4] - 1]
            )
    assert not list(root.rglob("*.tmp"))


def test_manifest_records_what_studies_need(run, small):
    m = json.loads((run.path / "manifest.json").read_text())
    assert set(m) >= MANIFEST_KEYS
    assert m["complete"] is True and m["format"] == "xlalign.run"
    assert m["family"] == "qwen2" and m["architecture"] == "Qwen2ForCausalLM"
    assert m["n_layers"] == 4 and m["d_model"] == 32 and m["dtype"] == "float32"
    assert m["sites"] == ["embed", "L0", "L1", "L2", "L3", "final"]
    assert m["site_info"]["L3"]["module"] == "model.layers.3"
    assert "final norm" in m["site_info"]["final"]["description"]
    assert m["site_info"]["embed"]["module"] == "model.layers.0"
    assert m["ids"] == list(small.ids) and m["n_rows"] == len(small)
    assert m["corpus_fingerprint"] == small.fingerprint()
    assert m["meta_columns"] == ["category"]
    assert set(m["versions"]) >= {"xlalign", "torch", "transformers", "numpy"}
    assert m["adds_bos"] is False and m["bos_token"] is None
    assert m["random_init_seed"] is None and m["padding_side"] == "right"
    assert m["batch_size"] == 8 and m["n_batches"] == {"zh": 4, "en": 4}
    assert m["timings"]["prompts"] == 2 * len(small) and m["timings"]["capture_s"] > 0
    assert m["zero_norm_vectors"] == [] and m["n_zero_norm_vectors"] == 0


def test_run_reader(run, small):
    same = load_run(run.path)
    assert same.complete and same.languages == ("zh", "en")
    assert same.sites == ("embed", "L0", "L1", "L2", "L3", "final")
    assert same.pools == ("last", "mean", "tokens") and same.ids == small.ids
    assert same.meta == {"category": list(small.meta["category"])}
    np.testing.assert_array_equal(same["en", "L2", "mean"], same.array("en", "L2", "mean"))
    assert len(same.token_ids("zh")) == len(same.token_vectors("zh", "final")) == len(small)
    assert list(same.keys())[:2] == [("zh", "embed", "last"), ("zh", "embed", "mean")]
    assert list(same) == list(same.keys()) and len(same) == 2 * 6 * 2
    assert ("en", "final", "mean") in same and ("en", "final", "tokens") not in same
    assert same.lengths("en").tolist() == [len(x) for x in same.token_ids("en")]
    assert "complete" in repr(same)


def test_missing_keys_list_what_exists(run):
    with pytest.raises(XlalignError, match=r"site 'L40' not in run: it has embed, L0\.\.L3, final"):
        run.array("zh", "L40", "last")
    with pytest.raises(XlalignError, match="language 'fr' not in run: it has zh, en"):
        run["fr", "L0", "last"]
    with pytest.raises(XlalignError, match="pool 'first' not in run: it has last, mean, tokens"):
        run.array("zh", "L0", "first")
    with pytest.raises(XlalignError, match="token_vectors"):
        run.array("zh", "L0", "tokens")
    with pytest.raises(XlalignError, match="does not exist"):
        load_run(run.path / "nope")


def test_token_vectors_need_the_tokens_pool(tiny_models, small, tmp_path):
    r = xlalign.extract(str(tiny_models["gpt2"]), small, "zh,en", sites="L0", pools="last",
                        output=tmp_path / "r", progress=False)  # fmt: skip
    with pytest.raises(XlalignError, match="--pool tokens"):
        r.token_vectors("zh", "L0")


def test_refuses_to_overwrite_a_complete_run(tiny_models, small, tmp_path):
    path = str(tiny_models["llama"])
    out = tmp_path / "r"
    xlalign.extract(path, small, "zh,en", sites="L0", output=out, progress=False)
    with pytest.raises(XlalignError, match="already holds a complete run; pass --overwrite"):
        xlalign.extract(path, small, "zh,en", sites="L0", output=out, progress=False)
    with pytest.raises(XlalignError, match="complete run; nothing to resume"):
        xlalign.extract(path, small, "zh,en", sites="L0", output=out, resume=True, progress=False)
    again = xlalign.extract(
        path, small, "zh,en", sites="L1", output=out, overwrite=True, progress=False
    )
    assert again.sites == ("L1",) and not (out / "arrays" / "zh" / "L0").exists()
    with pytest.raises(XlalignError, match="--resume and --overwrite conflict"):
        xlalign.extract(path, small, "zh,en", output=out, resume=True, overwrite=True)


def test_never_deletes_a_folder_that_is_not_a_run(tiny_models, small, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(XlalignError, match="holds no run"):
        xlalign.extract(str(tiny_models["qwen2"]), small, "zh,en", output=out, overwrite=True,
                        progress=False)  # fmt: skip
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("pools", ["last,mean,first,weighted", "last,tokens"])
def test_resume_in_process_gives_identical_arrays(tiny_models, small, tmp_path, monkeypatch, pools):
    path = str(tiny_models["gpt2"])
    kwargs = dict(sites="all", pools=pools, batch_size=4, progress=False)
    whole = xlalign.extract(path, small, "zh,en", output=tmp_path / "whole", **kwargs)

    with monkeypatch.context() as m:
        crash_after(m, 11)  # zh has 8 batches of 4: this dies inside en
        with pytest.raises(Crash):
            xlalign.extract(path, small, "zh,en", output=tmp_path / "part", **kwargs)
    with pytest.raises(XlalignError, match=r"incomplete \(11 of 16 batches done\).*--resume"):
        load_run(tmp_path / "part")
    assert not load_run(tmp_path / "part", allow_incomplete=True).complete
    with pytest.raises(XlalignError, match=r"incomplete run; pass --overwrite.*or --resume"):
        xlalign.extract(path, small, "zh,en", output=tmp_path / "part", **kwargs)

    resumed = xlalign.extract(path, small, "zh,en", output=tmp_path / "part", resume=True, **kwargs)
    assert resumed.complete and len(resumed.manifest["sessions"]) == 2
    # done before the crash: all 8 zh batches (30 prompts) and 3 en batches of 4
    assert resumed.manifest["sessions"][-1]["prompts"] == 2 * len(small) - (len(small) + 3 * 4)
    for key in whole:
        np.testing.assert_array_equal(resumed[key], whole[key], err_msg=str(key))
    if "tokens" in whole.pools:
        for lang in whole.languages:
            for site in whole.sites:
                for a, b in zip(
                    resumed.token_vectors(lang, site), whole.token_vectors(lang, site), strict=True
                ):
                    np.testing.assert_array_equal(a, b)


def test_resume_refuses_a_different_setup(tiny_models, small, tmp_path, monkeypatch):
    path = str(tiny_models["qwen2"])
    out = tmp_path / "part"
    with monkeypatch.context() as m:
        crash_after(m, 2)
        with pytest.raises(Crash):
            xlalign.extract(path, small, "zh,en", batch_size=4, output=out, progress=False)
    with pytest.raises(
        XlalignError, match=r"cannot resume .*batch_size differs \(run: 4, now: 8\)"
    ):
        xlalign.extract(path, small, "zh,en", batch_size=8, output=out, resume=True)
    with pytest.raises(XlalignError, match="sites differs"):
        xlalign.extract(path, small, "zh,en", batch_size=4, sites="L0", output=out, resume=True)
    with pytest.raises(XlalignError, match="padding_side differs"):
        xlalign.extract(path, small, "zh,en", batch_size=4, padding_side="left", output=out,
                        resume=True)  # fmt: skip
    with pytest.raises(XlalignError, match="model_key differs"):
        xlalign.extract(str(tiny_models["llama"]), small, "zh,en", batch_size=4, output=out,
                        resume=True)  # fmt: skip
    other = small.head(20)
    with pytest.raises(XlalignError, match="corpus_fingerprint differs"):
        xlalign.extract(path, other, "zh,en", batch_size=4, output=out, resume=True)


def test_export_npz_writes_the_study_format(run, tmp_path):
    out = export_npz(run, tmp_path / "all_layers_lasttok.npz", pool="last")
    assert out == tmp_path / "all_layers_lasttok.npz"
    with np.load(out, allow_pickle=False) as npz:
        keys = set(npz.files)
        assert keys == {f"{lang}_{site}" for lang in ("zh", "en") for site in run.sites}
        np.testing.assert_array_equal(npz["zh_L0"], run["zh", "L0", "last"])
        np.testing.assert_array_equal(npz["en_final"], run["en", "final", "last"])
    sub = export_npz(run.path, tmp_path / "sub.npz", pool="mean", sites=["embed"], langs=["en"])
    with np.load(sub, allow_pickle=False) as npz:
        assert npz.files == ["en_embed"]
    with pytest.raises(XlalignError, match="pool 'first' not in run"):
        export_npz(run, tmp_path / "x.npz", pool="first")
    with pytest.raises(XlalignError, match="no fixed shape"):
        export_npz(run, tmp_path / "x.npz", pool="tokens")


def test_another_processs_writability_probe_is_not_run_data(tmp_path):
    """Rank 0 of a launch creates and deletes a probe file while taking the lock; another rank
    checking the folder at that instant must not take it for someone's data (this raced in a
    2-rank torchrun test under load: 'is not empty and holds no run')."""
    from xlalign.store.folders import prepare_folder
    from xlalign.store.lock import PROBE_PREFIX

    out = tmp_path / "run"
    out.mkdir()
    (out / f"{PROBE_PREFIX}12345").write_text("")
    prepare_folder(out, overwrite=False, check_only=True)  # no error: empty but for the probe
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(XlalignError, match="holds no run"):
        prepare_folder(out, overwrite=False, check_only=True)
