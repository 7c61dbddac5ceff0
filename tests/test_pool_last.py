"""One meaning of pool ``last`` (the last non-special token) and ``eos`` (the appended one).

Checked on tiny BERT, GPT-2, Qwen2 and Llama, with tokenizers that append nothing, a BOS, an
EOS, or both, against an independent capture: plain transformers ``output_hidden_states``, one
prompt at a time, the index picked from the tokenizer's own special-tokens mask. Runs written
before ``pool_semantics`` are read with their meaning named, or refused, never reinterpreted.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

import xlalign
from xlalign.cli import main
from xlalign.errors import RunError, XlalignError
from xlalign.models.testing import build_tiny_model
from xlalign.store.run import export_npz, load_run
from xlalign.studies.layers import SweepConfig, layer_sweep
from xlalign.studies.origin import origin_study

#: (architecture, what the tokenizer adds): None, "bos", "eos" or "bos+eos".
CASES = [
    ("bert", None),  # [CLS] ... [SEP], from the WordPiece fixture
    ("gpt2", None),
    ("qwen2", None),
    ("qwen2", "eos"),
    ("llama", "bos"),
    ("llama", "bos+eos"),
]


def _with_template(tokenizer, adds: str):
    """A copy of the byte-level BPE tokenizer whose post-processor adds BOS and/or EOS."""
    from tokenizers import processors

    tok = copy.deepcopy(tokenizer)
    bos, eos = "<|im_start|>", "<|endoftext|>"
    parts = ([bos] if "bos" in adds else []) + ["$A"] + ([eos] if "eos" in adds else [])
    backend = tok.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join(parts),
        special_tokens=[(t, backend.token_to_id(t)) for t in (bos, eos) if t in parts],
    )
    if "bos" in adds:
        tok.bos_token = bos
    return tok


@pytest.fixture(scope="module")
def models(tiny_models, bpe_tokenizer, tmp_path_factory) -> dict[tuple[str, str | None], Path]:
    root = tmp_path_factory.mktemp("templated")
    out: dict[tuple[str, str | None], Path] = {}
    for arch, adds in CASES:
        if adds is None:
            out[arch, adds] = tiny_models[arch]
        else:
            tok = _with_template(bpe_tokenizer, adds)
            out[arch, adds] = build_tiny_model(arch, tok, root / f"{arch}-{adds}")
    return out


@pytest.fixture(scope="module")
def small(problems):
    return problems.head(12)


def reference(path: Path, arch: str, texts) -> list[dict[str, np.ndarray]]:
    """Per prompt: ``hs`` (n_layers + 1, T, d) float64 and the tokenizer's special mask."""
    auto = AutoModel if arch == "bert" else AutoModelForCausalLM
    model = auto.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt", return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")[0].numpy().astype(bool)
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        out.append({"hs": np.stack([h[0].double().numpy() for h in hs]), "special": special})
    return out


def _site_index(site: str, n_layers: int) -> int:
    """Which ``hidden_states`` entry a site is (embed = 0; the raw last block has none)."""
    if site == "embed":
        return 0
    if site == "final":
        return n_layers
    return int(site[1:]) + 1


# The tiny decoders' EOS is their padding token, whose embedding row is zero.
@pytest.mark.filterwarnings("ignore::xlalign.capture.ZeroNormWarning")
@pytest.mark.parametrize(("arch", "adds"), CASES)
def test_last_and_eos_match_an_independent_capture(models, small, tmp_path, arch, adds):
    path = models[arch, adds]
    ref = reference(path, arch, small.text("en"))
    ends_special = all(r["special"][-1] for r in ref)
    expect_ends = arch == "bert" or (adds is not None and "eos" in adds)
    assert ends_special == expect_ends  # the templates do what the case says
    pools = ("last", "eos") if ends_special else ("last",)
    run = xlalign.extract(
        str(path), small, ["en"], sites="all", pools=pools, batch_size=5,
        padding_side="left" if arch == "llama" else "right", output=tmp_path / "run",
        progress=False,
    )  # fmt: skip
    assert run.manifest["pool_semantics"] == 2 and run.pool_note is None
    n = run.n_layers
    # the raw last block of a model with a final norm is not a hidden_states entry
    sites = [s for s in run.sites if not (s == f"L{n - 1}" and "final" in run.sites)]
    for site in sites:
        k = _site_index(site, n)
        last = np.stack([r["hs"][k][np.flatnonzero(~r["special"])[-1]] for r in ref])
        got = run.array("en", site, "last")
        np.testing.assert_allclose(got, last, rtol=1e-5, atol=1e-5, err_msg=f"{site} last")
        if ends_special:
            eos = np.stack([r["hs"][k][-1] for r in ref])
            np.testing.assert_allclose(run.array("en", site, "eos"), eos, rtol=1e-5, atol=1e-5)
            assert not np.allclose(got, eos, atol=1e-3)  # two different vectors
        else:  # nothing appended: the last non-special token is the final token
            np.testing.assert_allclose(got, np.stack([r["hs"][k][-1] for r in ref]), atol=1e-5)


def test_eos_is_refused_when_the_tokenizer_appends_nothing(tiny_models, small, tmp_path):
    with pytest.raises(XlalignError, match=r"prompt id \S+ \(zh\) does not end in a special"):
        xlalign.extract(
            str(tiny_models["gpt2"]), small, ["zh", "en"], sites="embed", pools="last,eos",
            output=tmp_path / "run", progress=False,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# sweep, origin and export agree on one vector


def test_sweep_origin_and_export_use_the_same_last_token(tiny_models, problems, tmp_path):
    corpus = problems.head(40)
    run = xlalign.extract(
        str(tiny_models["bert"]), corpus, ["zh", "en"], sites="embed,L0",
        pools="last,mean,eos,tokens", output=tmp_path / "run", progress=False,
    )  # fmt: skip
    sweep = layer_sweep(run, SweepConfig(metrics=("z",), n_boot=0), progress=False)
    z = {(r["site"], r["pool"]): r["value"] for r in sweep["records"] if r["metric"] == "z"}
    origin = origin_study(run)
    assert origin["z_raw_embed_last_token"] == pytest.approx(z["embed", "last"], rel=1e-9)
    assert origin["z_l0_output_last_token"] == pytest.approx(z["L0", "last"], rel=1e-9)
    assert z["L0", "eos"] != z["L0", "last"]  # [SEP] is another vector
    assert "not a special token" in sweep["pool_info"]["last"] and sweep["pool_note"] is None
    assert "pool last" in origin["last_token"] and "pool eos" in origin["last_token"]
    npz = np.load(export_npz(run, tmp_path / "x.npz", pool="last"), allow_pickle=False)
    picked = [
        v[int(np.flatnonzero(~m)[-1])]
        for v, m in zip(run.token_vectors("zh", "L0"), run.special_tokens_mask("zh"), strict=True)
    ]
    np.testing.assert_array_equal(npz["zh_L0"], np.stack(picked))


# ---------------------------------------------------------------------------------------------
# runs written with the old meaning


def _make_legacy(run_path: Path, dest: Path, stored_as_last: str) -> Path:
    """A copy of a run as an older xlalign wrote it: its ``last`` file holds ``stored_as_last``."""
    shutil.copytree(run_path, dest)
    manifest_path = dest / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["pool_semantics"]
    pools = [p for p in manifest["pools"] if p not in ("last", "eos")]
    manifest["pools"] = ["last", *pools]
    for lang_dir in (dest / "arrays").iterdir():
        for site_dir in lang_dir.iterdir():
            src = site_dir / f"{stored_as_last}.npy"
            keep = src.read_bytes()
            for p in ("last", "eos"):
                (site_dir / f"{p}.npy").unlink(missing_ok=True)
            (site_dir / "last.npy").write_bytes(keep)
    manifest_path.write_text(json.dumps(manifest))
    return dest


@pytest.fixture(scope="module")
def bert_run(tiny_models, problems, tmp_path_factory):
    return xlalign.extract(
        str(tiny_models["bert"]), problems.head(40), ["zh", "en"], sites="embed,L0",
        pools="last,mean,eos,tokens", output=tmp_path_factory.mktemp("b") / "run",
        progress=False,
    )  # fmt: skip


def test_old_bert_run_reads_its_last_as_eos_and_refuses_last(bert_run, problems, tmp_path, capsys):
    old = load_run(_make_legacy(bert_run.path, tmp_path / "old", "eos"))
    assert "last" not in old.pools and "eos" in old.pools
    assert "read as pool 'eos'" in str(old.pool_note)
    np.testing.assert_array_equal(old["zh", "L0", "eos"], bert_run["zh", "L0", "eos"])
    with pytest.raises(RunError, match=r"older xlalign.*read as pool 'eos'.*extract it again"):
        old.array("zh", "L0", "last")
    # export-npz --pool last says why, as a one-line CLI error
    assert main(["export-npz", str(old.path), "--pool", "last", "-o", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "older xlalign" in err and "Traceback" not in err
    # the sweep sees pool eos, never a 'last' that is [SEP]
    sweep = layer_sweep(old, SweepConfig(metrics=("z",), n_boot=0), progress=False)
    assert set(sweep["pools"]) == {"mean", "eos"}
    assert "read as pool 'eos'" in sweep["pool_note"]  # alignment.json and the report say so
    # the origin study picks today's last token from the token vectors, and says so
    origin = origin_study(old)
    assert origin["z_raw_embed_last_token"] == pytest.approx(
        origin_study(bert_run)["z_raw_embed_last_token"], rel=1e-12
    )
    assert "picked from the run's token vectors" in origin["last_token"]
    # xlalign run does not reuse it as if its 'last' were today's
    from xlalign.pipeline.reuse import ensure_run

    with pytest.raises(RunError, match=r"pool\(s\) last missing \(run .* older xlalign"):
        ensure_run(
            old.manifest["model"], problems.head(40), old.path, langs=["zh", "en"],
            sites="embed,L0", pools=("last", "mean", "tokens"), progress=False,
        )  # fmt: skip


def test_old_decoder_run_keeps_last_with_the_meaning_named(tiny_models, problems, tmp_path):
    new = xlalign.extract(
        str(tiny_models["gpt2"]), problems.head(20), ["zh", "en"], sites="embed",
        pools="last,mean", output=tmp_path / "new", progress=False,
    )  # fmt: skip
    old = load_run(_make_legacy(new.path, tmp_path / "old", "last"))
    assert "last" in old.pools and "today's 'last'" in str(old.pool_note)
    np.testing.assert_array_equal(old["en", "embed", "last"], new["en", "embed", "last"])
    # one prompt that ends in a special token: the stored 'last' is neither meaning
    special = old.path / "tokens" / "en.special.npy"
    mask = np.load(special)
    mask[np.load(old.path / "tokens" / "en.offsets.npy")[1] - 1] = True
    np.save(special, mask)
    mixed = load_run(old.path)
    assert "last" not in mixed.pools and "eos" not in mixed.pools
    with pytest.raises(RunError, match=r"special token for 1 of 40 prompts.*extract it again"):
        mixed.array("en", "embed", "last")


def test_a_run_from_a_newer_pool_semantics_is_refused(bert_run, tmp_path):
    dest = shutil.copytree(bert_run.path, tmp_path / "new")
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["pool_semantics"] = 99
    (dest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match="pool_semantics 99 is newer"):
        load_run(dest)
