"""The report: files and figures written, a self-contained escaped page, and a real browser check.

The browser test drives headless Chromium over the DevTools protocol with a small stdlib
websocket client (no extra dependency) and skips where no Chromium binary exists.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from browser import check_page
from xlalign.report import (
    SEED_KEYS,
    HeatmapInput,
    PcaInput,
    ReportInputs,
    build_report,
    category_order,
    cosine_matrix,
    fmt_value,
    pca_2d,
)
from xlalign.report.figures import alignment_series, alignment_sites

EVIL = "<script>alert(1)</script>"
SITES = ["embed", "L0", "L1", "L2", "L3", "final"]
METRICS = ["z", "p1_xy", "p1_yx", "mexa", "cka", "semantic_hub"]
Z_L0_CACHED_REASON = "no all-layers cache at output/all_layers_lasttok.npz"


# ---------------------------------------------------------------------------------------------
# Synthetic, realistic inputs
# ---------------------------------------------------------------------------------------------


def _alignment(scale: float, rng: np.random.Generator) -> dict[str, Any]:
    """An alignment.json for zh/en with CIs, and a few undefined values."""
    records = []
    for depth, site in enumerate(SITES):
        for pool in ("last", "mean"):
            for metric in METRICS:
                value: float | None = float(scale * (depth + 1) + rng.normal())
                reason = None
                if metric == "semantic_hub":
                    value, reason = None, "needs a model with an unembedding matrix"
                if metric == "mexa" and site == "L2":
                    value, reason = None, "ties in every row"
                ci = metric == "z" and value is not None
                records.append(
                    {
                        "site": site,
                        "depth": depth,
                        "pool": pool,
                        "x": "zh",
                        "y": "en",
                        "metric": metric,
                        "value": value,
                        "ci_low": value - 1.0 if ci and value is not None else None,
                        "ci_high": value + 1.0 if ci and value is not None else None,
                        "n": 50,
                        "undefined_reason": reason,
                    }
                )
    return {
        "languages": ["zh", "en"],
        "pairs": [["zh", "en"]],
        "sites": SITES,
        "pools": ["last", "mean"],
        "metrics": ["z", "p1", "mexa", "cka", "semantic_hub"],
        "null": "exact",
        "records": records,
    }


def _seed_values(offset: float) -> dict[str, Any]:
    return {
        "z_raw_embed_last_token": 9.8765 + offset,
        "z_raw_embed_mean_no_bos": 3.21 + offset,
        "z_l0_output_last_token": 14.625 + offset,
        "z_l0_cached": None,
        "delta_l0_minus_embed": 4.75,
        "embedding_pca_varexp": [0.31, 0.12, 0.05, 0.04, 0.03, 0.02, 0.02, 0.01, 0.01, 0.01],
        "embedding_cohen_d_pc0": 2.375,
        "norm_ratio_l0_over_embed": 17.5,
        "z_pca_2": 1.125,
        "z_pca_5": 2.625,
        "z_pca_10": 5.875 + offset,
    }


def _decomposition() -> list[dict[str, Any]]:
    return [
        {
            "site": site,
            "z_mean_full": 4.5 + k,
            "z_mean_shared": None if site == "embed" else 3.25,
            "z_mean_nonshared": 2.0,
            "z_last": 9.5,
            "z_last_nonidentical": 6.5,
            "z_stratified": 1.5,
            "z_within_category": {"0": 0.5, "1": None, EVIL: 0.25},
            "reasons": {"z_mean_shared": "no shared tokens"} if site == "embed" else {},
        }
        for k, site in enumerate(["embed", "L0"])
    ]


def _origin() -> dict[str, Any]:
    origin: dict[str, Any] = {
        "model": "tiny/test-model",
        "languages": ["zh", "en"],
        "n_pairs": 50,
        "null": {"method": "exact", "n_perms": None, "seed": 42},
        **_seed_values(0.0),
        "undefined": {"z_l0_cached": Z_L0_CACHED_REASON},
        "tokenizer": {
            "name": "byte-bpe",
            "adds_bos": False,
            "bos_token": None,
            "unk_rate": {"zh": 0.0, "en": 0.0},
        },
        "positions": {"has_additive_positions": True, "embed_site": "embed"},
        "token_classes": {
            "zh": {"cjk": 900, "digit": 200, "punct": 150, "space": 80},
            "en": {"latin": 700, "digit": 200, "punct": 120, "space": 300},
        },
        "shared_tokens": {
            "pairs_with_shared": 48,
            "n_pairs": 50,
            "total": 220,
            "by_class": {"digit": 180, "punct": 40},
            "embedding_cosine": 1.0,
            "embedding_cosine_note": "same id, same embedding row",
            "context_cosine": {"embed": 1.0, "L0": 0.9375},
        },
        "decomposition": _decomposition(),
        "last_token_table": [
            {"zh": "。", "en": ".", "identical": False, "count": 30},
            {"zh": "?", "en": "?", "identical": True, "count": 10},
            {"zh": "。", "en": ").", "identical": False, "count": 10},
        ],
        "control": {"kind": "random-init", "seed": 0, **_seed_values(-9.0), "decomposition": []},
    }
    del origin["z_pca_5"]  # a missing key must render as undefined, not crash
    return origin


def _vectors(
    n: int, d: int, rng: np.random.Generator, categories: list[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Two languages' (n, d) vectors sharing a per-category and per-item direction."""
    cats = sorted(set(categories), key=str)
    centre = {c: rng.normal(size=d) * 3 for c in cats}
    item = rng.normal(size=(n, d))
    base = np.stack([centre[c] for c in categories]) + item
    x = base + rng.normal(size=d) * 2 + 0.3 * rng.normal(size=(n, d))
    y = base - rng.normal(size=d) * 2 + 0.3 * rng.normal(size=(n, d))
    return x, y


@pytest.fixture(scope="module")
def inputs() -> ReportInputs:
    rng = np.random.default_rng(0)
    n, d = 40, 24
    categories: list[Any] = [[0, 1, 2, EVIL][i % 4] for i in range(n)]
    pca = {}
    for site in ("embed", "L0", "final"):
        x, y = _vectors(n, d, rng, categories)
        pca[site] = PcaInput(x=x, y=y, lang_x="zh", lang_y="en", categories=categories)
    x, y = _vectors(n, d, rng, categories)
    return ReportInputs(
        title=f"Study {EVIL} zh/en",
        alignment=_alignment(2.0, rng),
        control_alignment=_alignment(0.2, rng),
        origin=_origin(),
        pca=pca,
        heatmap=HeatmapInput(
            x=x, y=y, site="L0", pool="last", lang_x="zh", lang_y="en", categories=categories
        ),
        provenance={
            "versions": {"xlalign": "0.1.0", "torch": "2.13.0"},
            "model": {"name": "tiny/test-model", "revision": "abc123"},
            "corpus_sha256": "f" * 64,
            "command": f"xlalign run --title '{EVIL}'",
            "wall_s": {"extract": 1.25, "align": 0.5},
        },
        summary_lines=["z at L0: 14.62", f"category {EVIL} included"],
    )


@pytest.fixture(scope="module")
def report(inputs: ReportInputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_report(tmp_path_factory.mktemp("run"), inputs)


def _row(page: str, key: str, after: str = "") -> str:
    """The first table row of ``page`` (past the text ``after``) whose first cell is ``key``."""
    start = page.index(after) if after else 0
    m = re.search(rf"<tr><td>{re.escape(key)}</td>.*?</tr>", page[start:])
    assert m, f"no row for {key}"
    return m.group(0)


# ---------------------------------------------------------------------------------------------
# Files and content
# ---------------------------------------------------------------------------------------------


def test_every_file_and_figure_is_written(report: dict[str, Path]) -> None:
    assert set(report) == {"html", "md", "alignment", "pca", "heatmap"}
    assert report["html"].name == "report.html" and report["md"].name == "report.md"
    for name in ("alignment", "pca", "heatmap"):
        png = report[name]
        assert png.name == f"fig_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = png.with_suffix(".svg")
        assert "<svg" in svg.read_text(encoding="utf-8")[:2000]
    md = report["md"].read_text(encoding="utf-8")
    for name in ("alignment", "pca", "heatmap"):
        assert f"](fig_{name}.png)" in md


def test_html_is_self_contained(report: dict[str, Path]) -> None:
    page = report["html"].read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.I)
    assert "url(" not in page and "@import" not in page
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(srcs) == 3
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"


def test_seed_keys_and_values_appear(report: dict[str, Path]) -> None:
    page = report["html"].read_text(encoding="utf-8")
    md = report["md"].read_text(encoding="utf-8")
    seed = _seed_values(0.0)
    control = _seed_values(-9.0)
    for key in SEED_KEYS:
        row = _row(page, key)
        md_key = key.replace("_", r"\_")
        assert md_key in md
        if key == "z_pca_5" or seed[key] is None:
            continue
        assert fmt_value(seed[key]) in row, (key, row)
        if control[key] is not None:
            assert fmt_value(control[key]) in row  # the control column
    assert "14.62" in _row(page, "z_l0_output_last_token")
    assert "5.62" in _row(page, "z_l0_output_last_token")  # control, offset -9
    assert "0.31, 0.12, 0.05" in _row(page, "embedding_pca_varexp")


def test_null_and_missing_values_render_undefined_with_reason(report: dict[str, Path]) -> None:
    page = report["html"].read_text(encoding="utf-8")
    row = _row(page, "z_l0_cached")
    assert f"undefined: {html.escape(Z_L0_CACHED_REASON)}" in row
    assert "undefined: not in origin.json" in _row(page, "z_pca_5")
    # Decomposition: a null cell says undefined and its reason is shown.
    embed_row = _row(page, "embed", after="Decomposition of the model")
    assert 'class="undef" title="no shared tokens">undefined<' in embed_row
    assert "embed, z_mean_shared: no shared tokens" in page
    md = report["md"].read_text(encoding="utf-8")
    assert "undefined: " + Z_L0_CACHED_REASON.replace("_", r"\_") in md


def test_data_strings_are_escaped(report: dict[str, Path]) -> None:
    page = report["html"].read_text(encoding="utf-8")
    md = report["md"].read_text(encoding="utf-8")
    assert "<script" not in page and "<script" not in md
    escaped = html.escape(EVIL)
    assert f"<title>Study {escaped} zh/en</title>" in page
    assert f"within category {escaped}" in page  # a category name from the data
    assert f"category {escaped} included" in page  # a summary line
    assert escaped in md


def test_origin_tables_present(report: dict[str, Path]) -> None:
    page = report["html"].read_text(encoding="utf-8")
    assert "<td>&#x27;。&#x27;</td><td>&#x27;.&#x27;</td><td>false</td><td>30</td>" in page
    assert _row(page, "cjk") == "<tr><td>cjk</td><td>900</td><td>0</td></tr>"
    assert _row(page, "total") == "<tr><td>total</td><td>1330</td><td>1320</td></tr>"
    assert "adds a BOS token: false" in page
    assert "additive position embeddings: true" in page
    assert "pairs sharing at least one token: 48 of 50" in page  # pairs, not shared tokens
    assert "shared tokens, counted once per pair and summed over pairs: 220" in page
    # Provenance: nested keys flattened, long strings kept whole.
    assert "<td>versions.torch</td><td>2.13.0</td>" in page
    assert f"<td>corpus_sha256</td><td>{'f' * 64}</td>" in page
    assert "<td>wall_s.extract</td><td>1.25</td>" in page


def test_minimal_inputs_never_crash(tmp_path: Path) -> None:
    """Empty documents and missing keys give an "undefined" report, not an exception."""
    paths = build_report(tmp_path, ReportInputs(title="empty", origin={"tokenizer": None}))
    assert set(paths) == {"html", "md"}
    page = paths["html"].read_text(encoding="utf-8")
    assert "the layer sweep is undefined" in page
    assert "undefined: not in origin.json" in _row(page, "z_raw_embed_last_token")
    assert "No provenance was recorded" in page
    assert "<img" not in page


def test_malformed_origin_never_crashes(tmp_path: Path) -> None:
    """Keys of the wrong type read as missing; NaN shows as NaN, not as a number."""
    origin = {
        "languages": None,
        "undefined": "not a mapping",
        "decomposition": "not a list",
        "token_classes": {"zh": None, "en": {"cjk": "x"}},
        "last_token_table": [None, {"zh": None}, {"en": "a"}],
        "shared_tokens": {"by_class": None, "context_cosine": {"L0": None}},
        "tokenizer": "not a mapping",
        "control": {"decomposition": [{"site": None, "z_within_category": None}]},
        "z_pca_2": float("nan"),
    }
    paths = build_report(tmp_path, ReportInputs(title="odd", origin=origin))
    page = paths["html"].read_text(encoding="utf-8")
    assert "<td>NaN</td>" in _row(page, "z_pca_2")
    assert "The decomposition is undefined (not computed)." in page
    assert "adds a BOS token: undefined" in page


def test_many_pairs_one_figure_each_capped(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = _alignment(1.0, rng)
    langs = ["zh", "fr", "de", "es", "ja", "ko", "ru", "ar"]
    pairs = [[lang, "en"] for lang in langs]
    z_only = [r for r in base["records"] if r["metric"] == "z"]  # keeps the test fast
    records = [{**r, "x": lang} for lang in langs for r in z_only]
    doc = {**base, "pairs": pairs, "records": records}
    paths = build_report(tmp_path, ReportInputs(title="many", alignment=doc))
    figs = sorted(k for k in paths if k.startswith("alignment"))
    assert figs == sorted(f"alignment_{lang}-en" for lang in langs[:6])
    assert "first 6 of 8 language pairs" in paths["html"].read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Helpers against brute force
# ---------------------------------------------------------------------------------------------


def test_category_order_groups_stably() -> None:
    order, starts, labels = category_order([2, 0, 1, 0, 2, 1, 0])
    assert order.tolist() == [1, 3, 6, 2, 5, 0, 4]
    assert starts == [0, 3, 5]
    assert labels == [0, 1, 2]
    # Text labels sort by text; numbers before text, numerically (10 after 9).
    order, starts, labels = category_order(["b", 10, "a", 9, "b", "a"])
    assert labels == [9, 10, "a", "b"]
    assert order.tolist() == [3, 1, 2, 5, 0, 4]
    assert starts == [0, 1, 2, 4]


def test_heatmap_reorders_rows_and_columns_alike() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    sim = cosine_matrix(x, y)
    brute = np.array([[np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for b in y] for a in x])
    np.testing.assert_allclose(sim, brute, atol=1e-12)
    order, _, _ = category_order([1, 0, 1, 0, 2, 2, 0, 1, 2])
    grouped = sim[np.ix_(order, order)]
    # The diagonal (matched pairs) stays the diagonal after grouping.
    np.testing.assert_allclose(np.diag(grouped), np.diag(sim)[order])


def test_pca_matches_covariance_eigendecomposition() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 6)) + 1.0
    px, py, varexp = pca_2d(x, y)
    pooled = np.concatenate(
        [x / np.linalg.norm(x, axis=1)[:, None], y / np.linalg.norm(y, axis=1)[:, None]]
    )
    pooled -= pooled.mean(axis=0)
    evals = np.linalg.eigvalsh(pooled.T @ pooled)[::-1]
    proj = np.concatenate([px, py])
    np.testing.assert_allclose((proj**2).sum(axis=0), evals[:2], rtol=1e-10)
    np.testing.assert_allclose(varexp, evals[:2] / evals.sum(), rtol=1e-10)
    assert abs(float(proj[:, 0] @ proj[:, 1])) < 1e-9


def test_undefined_alignment_values_are_gaps_not_zeros() -> None:
    doc = _alignment(1.0, np.random.default_rng(4))
    sites = alignment_sites(doc)
    assert sites == SITES
    s = alignment_series(doc, sites, ("zh", "en"), "mexa", "last")
    assert np.isnan(s.value[SITES.index("L2")])
    assert np.isfinite(np.delete(s.value, SITES.index("L2"))).all()
    assert s.reasons == {"L2": "ties in every row"}


def test_pca_input_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"got x \(4, 3\) and y \(5, 3\)"):
        PcaInput(x=np.zeros((4, 3)), y=np.zeros((5, 3)), lang_x="zh", lang_y="en")
    with pytest.raises(ValueError, match="categories has 2 entries but x and y have 4 rows"):
        HeatmapInput(
            x=np.zeros((4, 3)),
            y=np.zeros((4, 3)),
            site="L0",
            pool="last",
            lang_x="zh",
            lang_y="en",
            categories=[0, 1],
        )


def test_report_renders_in_headless_chromium(report: dict[str, Path], tmp_path: Path) -> None:
    n_figures = len([k for k in report if k not in ("html", "md")])
    screenshot = report["html"].parent / "report.png"
    state, errors = check_page(report["html"], screenshot, tmp_path)
    assert errors == [], errors
    assert state["count"] == n_figures == 3, state
    assert state["allRendered"], state["sizes"]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000
