"""Peer parity: ``compat="platonic"`` / ``compat="mexa"`` against the peers' definitions.

Every reference below is written in this file from the peers' published code (platonic-rep
``metrics.py`` and ``measure_alignment.py``; MEXA ``embed_extractor.py``), literally and densely
in float64: full ``n x n`` kernels, the centring matrix ``H``, Python dynamic programs. Each
documented difference between xlalign's default and the peer gets a test showing its size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from references import cka, hsic_unbiased, hsics
from xlalign.capture.pooling import make_plan, pool
from xlalign.errors import XlalignError
from xlalign.metrics import (
    cknna,
    cycle_knn,
    edit_distance_knn,
    lcs_knn,
    linear_cka,
    mutual_knn,
    platonic_clamp,
    prepare_features,
    svcca,
)
from xlalign.store.files import array_path
from xlalign.store.run import load_run
from xlalign.store.synthetic import write_synthetic_run
from xlalign.studies.layers import SweepConfig, layer_sweep

# ------------------------------------------------------------------ references (platonic-rep)


def ref_normalize(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def ref_knn(f: np.ndarray, k: int) -> np.ndarray:
    """compute_nearest_neighbors: (F F^T).fill_diagonal_(-1e8).argsort(descending)[:, :k]."""
    s = f @ f.T
    np.fill_diagonal(s, -1e8)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def ref_mutual_knn(a: np.ndarray, b: np.ndarray, k: int) -> float:
    ka, kb = ref_knn(a, k), ref_knn(b, k)
    n = len(a)
    ma, mb = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        ma[i, ka[i]] = 1
        mb[i, kb[i]] = 1
    return float(((ma * mb).sum(axis=1) / k).mean())


def ref_cycle_knn(a: np.ndarray, b: np.ndarray, k: int) -> float:
    ka, kb = ref_knn(a, k), ref_knn(b, k)
    hits = [any(i in ka[j] for j in kb[i]) for i in range(len(a))]
    return float(np.mean(hits))


def ref_lcs(x: list[int], y: list[int]) -> int:
    m, n = len(x), len(y)
    dp = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            if x[i - 1] == y[j - 1]:
                dp[i][j] = dp[i - 1][j - 1] + 1
            else:
                dp[i][j] = max(dp[i - 1][j], dp[i][j - 1])
    return dp[m][n]


def ref_levenshtein(x: list[int], y: list[int]) -> int:
    prev = list(range(len(y) + 1))
    for i, xi in enumerate(x, 1):
        cur = [i]
        for j, yj in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (xi != yj)))
        prev = cur
    return prev[-1]


def ref_lcs_knn(a: np.ndarray, b: np.ndarray, k: int) -> float:
    ka, kb = ref_knn(a, k), ref_knn(b, k)
    return float(np.mean([ref_lcs(list(ka[i]), list(kb[i])) for i in range(len(a))]))


def ref_edit_knn(a: np.ndarray, b: np.ndarray, k: int) -> float:
    ka, kb = ref_knn(a, k), ref_knn(b, k)
    d = [ref_levenshtein(list(ka[i]), list(kb[i])) for i in range(len(a))]
    return float(1 - np.mean(d) / k)


def ref_cka_platonic(a: np.ndarray, b: np.ndarray, unbiased: bool = False) -> float:
    return cka(a, b, unbiased, eps=1e-6)


def ref_cknna_platonic(a: np.ndarray, b: np.ndarray, k: int, eps: float = 1e-6) -> float:
    n = len(a)
    kmat, lmat = a @ a.T, b @ b.T

    def sim(kk: np.ndarray, ll: np.ndarray) -> float:
        kh, lh = kk.copy(), ll.copy()
        np.fill_diagonal(kh, -np.inf)
        np.fill_diagonal(lh, -np.inf)
        mk, ml = np.zeros((n, n)), np.zeros((n, n))
        for i in range(n):
            mk[i, np.argsort(-kh[i], kind="stable")[:k]] = 1
            ml[i, np.argsort(-lh[i], kind="stable")[:k]] = 1
        mask = mk * ml
        return hsic_unbiased(mask * kk, mask * ll)

    return sim(kmat, lmat) / (np.sqrt(sim(kmat, kmat) * sim(lmat, lmat)) + eps)


def ref_remove_outliers_joint(stack: np.ndarray, q: float = 0.95) -> np.ndarray:
    """remove_outliers(feats (N, L, D), q, exact=False): one threshold for the whole stack."""
    flat = np.abs(stack.reshape(stack.shape[0], -1))
    t = np.mean([np.quantile(row, q) for row in flat])
    return np.clip(stack, -t, t)


def ref_principal_cosines(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    q1, _ = np.linalg.qr(u1)
    q2, _ = np.linalg.qr(u2)
    return np.linalg.svd(q1.T @ q2, compute_uv=False)


def ref_svcca_platonic(a: np.ndarray, b: np.ndarray, dims: int) -> float:
    def prep(f: np.ndarray) -> np.ndarray:
        c = f - f.mean(axis=0)
        return c / (c.std(axis=0, ddof=1) + 1e-8)

    u1 = np.linalg.svd(prep(a), full_matrices=False)[0][:, :dims]
    u2 = np.linalg.svd(prep(b), full_matrices=False)[0][:, :dims]
    return float(ref_principal_cosines(u1, u2).mean())


def paired(n: int = 40, d: int = 12, seed: int = 0, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    rs = np.random.RandomState(seed)
    z = rs.randn(n, 4)
    x = z @ rs.randn(4, d) + 0.8 * rs.randn(n, d) + shift * rs.randn(d)
    y = z @ rs.randn(4, d + 3) + 0.8 * rs.randn(n, d + 3) + shift * rs.randn(d + 3)
    return x, y


# ------------------------------------------------------------------ the three k-NN sequence metrics


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_sequence_knn_metrics_equal_platonic_definitions(k: int, seed: int) -> None:
    x, y = paired(seed=seed)
    a, b = ref_normalize(x), ref_normalize(y)
    assert cycle_knn(x, y, k=k, prepare=False, compat="platonic").score == pytest.approx(
        ref_cycle_knn(a, b, k), abs=1e-12
    )
    assert lcs_knn(x, y, k=k, prepare=False, compat="platonic").score == pytest.approx(
        ref_lcs_knn(a, b, k), abs=1e-12
    )
    assert edit_distance_knn(x, y, k=k, prepare=False, compat="platonic").score == pytest.approx(
        ref_edit_knn(a, b, k), abs=1e-12
    )
    # the default prepares features (per-site clamp + normalise) exactly as prepare_features
    px, py = prepare_features(x), prepare_features(y)
    assert lcs_knn(x, y, k=k).score == pytest.approx(ref_lcs_knn(px, py, k), abs=1e-12)
    assert cycle_knn(x, y, k=k).score == pytest.approx(ref_cycle_knn(px, py, k), abs=1e-12)


def test_sequence_knn_metrics_with_ties_go_to_the_lower_index() -> None:
    # integer features on a few distinct values: many exactly equal inner products
    rs = np.random.RandomState(3)
    x = rs.randint(0, 2, size=(25, 4)).astype(float) + np.eye(25, 4)
    y = rs.randint(0, 2, size=(25, 3)).astype(float) + np.eye(25, 3)
    for k in (2, 5):
        assert lcs_knn(x, y, k=k, prepare=False).score == pytest.approx(
            ref_lcs_knn(x, y, k), abs=1e-12
        )
        assert edit_distance_knn(x, y, k=k, prepare=False).score == pytest.approx(
            ref_edit_knn(x, y, k), abs=1e-12
        )
        assert cycle_knn(x, y, k=k, prepare=False).score == pytest.approx(
            ref_cycle_knn(x, y, k), abs=1e-12
        )
        assert mutual_knn(x, y, k=k, prepare=False).score == pytest.approx(
            ref_mutual_knn(x, y, k), abs=1e-12
        )


def test_sequence_knn_metrics_on_identical_spaces_and_asymmetry() -> None:
    x, y = paired()
    assert lcs_knn(x, x, k=5).score == 5.0  # platonic-rep does not divide by k
    assert edit_distance_knn(x, x, k=5).score == 1.0
    assert cycle_knn(x, x, k=5).score == 1.0
    # cycle_knn is directed (knn_A[knn_B]); the reference shows both directions
    a, b = prepare_features(x), prepare_features(y)
    assert cycle_knn(y, x, k=2).score == pytest.approx(ref_cycle_knn(b, a, 2), abs=1e-12)
    with pytest.raises(XlalignError, match="k must be between"):
        lcs_knn(x, y, k=len(x))


# ------------------------------------------------------------------ CKA, CKNNA, SVCCA in compat mode


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_platonic_equals_its_code(unbiased: bool) -> None:
    x, y = paired(shift=3.0)
    a, b = ref_normalize(x), ref_normalize(y)
    got = linear_cka(x, y, unbiased=unbiased, compat="platonic").cka
    assert got == pytest.approx(ref_cka_platonic(a, b, unbiased), rel=1e-10, abs=1e-13)


def test_cka_epsilon_difference_has_the_documented_size() -> None:
    """On unit rows sharing a large mean vector HSIC is tiny, so the 1e-6 is not negligible."""
    x, y = paired(n=60, shift=100.0, seed=5)
    a, b = ref_normalize(x), ref_normalize(y)
    for unbiased in (False, True):
        kl, kk, ll = hsics(a, b, unbiased)
        exact = linear_cka(a, b, unbiased=unbiased).cka
        compat = linear_cka(x, y, unbiased=unbiased, compat="platonic").cka
        # the dense kernels of the reference lose digits to the shared mean (cancellation)
        assert exact == pytest.approx(kl / np.sqrt(kk * ll), rel=1e-7)
        # the ratio is sqrt(kk ll) / (sqrt(kk ll) + 1e-6), from the reference HSICs
        expected_ratio = np.sqrt(kk * ll) / (np.sqrt(kk * ll) + 1e-6)
        assert compat / exact == pytest.approx(expected_ratio, rel=1e-7)
        assert abs(compat - exact) > 1e-5  # big enough to move a published third decimal


def test_cknna_platonic_equals_its_code() -> None:
    x, y = paired(n=30, seed=2)
    a, b = ref_normalize(x), ref_normalize(y)
    got = cknna(x, y, k=5, prepare=False, compat="platonic").score
    assert got == pytest.approx(ref_cknna_platonic(a, b, 5), rel=1e-9)
    exact = cknna(a, b, k=5, prepare=False).score
    assert exact == pytest.approx(ref_cknna_platonic(a, b, 5, eps=0.0), rel=1e-9)
    assert exact != got


def test_svcca_platonic_recipe() -> None:
    x, y = paired(n=50, d=20, seed=4)
    a, b = ref_normalize(x), ref_normalize(y)
    got = svcca(x, y, dims=6, compat="platonic").score
    assert got == pytest.approx(ref_svcca_platonic(a, b, 6), abs=1e-10)


def _svd_lowrank_numpy(a: np.ndarray, q: int, seed: int, niter: int = 2) -> np.ndarray:
    """torch.svd_lowrank's algorithm (Halko et al. randomized range finder), in numpy."""
    rs = np.random.RandomState(seed)
    qm = np.linalg.qr(a @ rs.randn(a.shape[1], q))[0]
    for _ in range(niter):
        qm = np.linalg.qr(a.T @ qm)[0]
        qm = np.linalg.qr(a @ qm)[0]
    u = np.linalg.svd(qm.T @ a, full_matrices=False)[0]
    return qm @ u


def test_svd_lowrank_matches_exact_svd_only_with_a_spectral_gap() -> None:
    """The documented SVCCA difference: platonic-rep's randomized SVD approximates the subspace."""
    rs = np.random.RandomState(0)
    n, d, dims = 200, 60, 5
    basis = np.linalg.qr(rs.randn(d, d))[0]
    gapped = rs.randn(n, d) @ np.diag([30.0] * dims + [1.0] * (d - dims)) @ basis
    flat = rs.randn(n, d)
    for data, close in ((gapped, True), (flat, False)):
        c = data - data.mean(axis=0)
        exact = np.linalg.svd(c, full_matrices=False)[0][:, :dims]
        approx = _svd_lowrank_numpy(c, dims, seed=1)
        agreement = ref_principal_cosines(exact, approx).mean()
        if close:
            assert agreement > 1 - 1e-6
        else:
            assert agreement < 0.99


def test_compat_is_checked() -> None:
    x, y = paired()
    for fn in (linear_cka, mutual_knn, cknna, svcca, cycle_knn, lcs_knn, edit_distance_knn):
        with pytest.raises(XlalignError, match="compat must be one of exact, platonic"):
            fn(x, y, compat="platonick")
    with pytest.raises(XlalignError, match="--compat"):
        SweepConfig(compat="mexa")


# ------------------------------------------------------------------ the joint clamp in the sweep


def test_platonic_clamp_is_one_threshold_over_all_layers() -> None:
    rs = np.random.RandomState(0)
    stack = np.stack([rs.randn(30, 8) * s for s in (1.0, 5.0, 25.0)], axis=1)  # (N, L, D)
    ref = ref_remove_outliers_joint(stack)
    got = platonic_clamp([stack[:, i] for i in range(3)])
    for i in range(3):
        np.testing.assert_allclose(got[i], ref[:, i], rtol=0, atol=1e-12)


def test_sweep_compat_platonic_uses_the_joint_clamp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write_synthetic_run(tmp_path / "r", n=40, d=16, n_sites=3, seed=1)
    run = load_run(path)
    # give the sites the scales 1, 5, 25 of the issue, in place
    scales = dict(zip(run.sites, (1.0, 5.0, 25.0), strict=True))
    for lang in run.languages:
        for site, s in scales.items():
            arr = np.load(array_path(run.path, lang, site, "last"), mmap_mode="r+")
            arr *= np.float32(s)
            arr.flush()
    run = load_run(path)
    metrics = ("cka", "cka_unbiased", "knn", "cknna", "cycle_knn", "lcs_knn", "edit_distance_knn")
    base = dict(metrics=metrics, n_boot=0)
    plat = layer_sweep(run, SweepConfig(compat="platonic", **base), progress=False)
    exact = layer_sweep(run, SweepConfig(**base), progress=False)
    assert plat["compat"] == "platonic"

    def stack(lang: str) -> np.ndarray:
        return np.stack([np.asarray(run.array(lang, s, "last"), np.float64) for s in run.sites], 1)

    cx, cy = ref_remove_outliers_joint(stack("zh")), ref_remove_outliers_joint(stack("en"))
    refs = {
        "cka": lambda a, b: ref_cka_platonic(a, b),
        "cka_unbiased": lambda a, b: ref_cka_platonic(a, b, unbiased=True),
        "mutual_knn": lambda a, b: ref_mutual_knn(a, b, 10),
        "cknna": lambda a, b: ref_cknna_platonic(a, b, 10),
        "cycle_knn": lambda a, b: ref_cycle_knn(a, b, 10),
        "lcs_knn": lambda a, b: ref_lcs_knn(a, b, 10),
        "edit_distance_knn": lambda a, b: ref_edit_knn(a, b, 10),
    }
    diffs = []
    for rec in (r for r in plat["records"] if r["site"] != "lexical"):
        i = run.sites.index(rec["site"])
        a, b = ref_normalize(cx[:, i]), ref_normalize(cy[:, i])
        assert rec["value"] == pytest.approx(refs[rec["metric"]](a, b), rel=1e-8, abs=1e-10), rec
        other = next(
            r for r in exact["records"] if (r["site"], r["metric"]) == (rec["site"], rec["metric"])
        )
        diffs.append(abs(other["value"] - rec["value"]))
    # per-site clamping (the default) and platonic-rep's joint clamp really differ here
    assert max(diffs) > 0.05


# ------------------------------------------------------------------ MEXA's absolute positions


def mexa_weighted(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MEXA embed_extractor: weights = attention_mask * arange(1..T), weighted mean."""
    t = torch.arange(1, mask.shape[1] + 1, dtype=torch.float64)
    w = mask.double() * t
    return (hidden.double() * w[..., None]).sum(1) / w.sum(1, keepdim=True)


@pytest.mark.parametrize("side", ["left", "right"])
def test_weighted_pool_mexa_positions(side: str) -> None:
    torch.manual_seed(0)
    lengths = [5, 2, 7]
    t = max(lengths)
    mask = torch.zeros(3, t, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "right":
            mask[b, :n] = 1
        else:
            mask[b, t - n :] = 1
    hidden = torch.randn(3, t, 4)
    special = torch.zeros_like(mask)
    absolute, _ = pool(hidden, make_plan(mask, special, ["weighted"], "absolute"))
    real, _ = pool(hidden, make_plan(mask, special, ["weighted"]))
    ref = mexa_weighted(hidden, mask)
    np.testing.assert_allclose(absolute[:, 0].double().numpy(), ref.numpy(), rtol=1e-5)
    if side == "right":
        np.testing.assert_allclose(real[:, 0].numpy(), absolute[:, 0].numpy(), rtol=1e-6)
    else:  # the documented difference: left padding shifts MEXA's weights
        gap = (real[:, 0] - absolute[:, 0]).abs().max().item()
        assert gap > 1e-3
    with pytest.raises(XlalignError, match="weighted_positions"):
        make_plan(mask, special, ["weighted"], "relative")


def test_extract_compat_mexa_end_to_end(tiny_models, problems, tmp_path):  # type: ignore[no-untyped-def]
    """Through extract: MEXA's weights equal ours without padding and differ with left padding."""
    import json

    import xlalign
    from xlalign.cli import main

    small = problems.head(12)
    data = small.to_jsonl(tmp_path / "p.jsonl")

    def run(name: str, *extra: str):  # type: ignore[no-untyped-def]
        out = tmp_path / name
        argv = [
            "extract", "--model", str(tiny_models["qwen2"]), "--data", str(data),
            "--langs", "zh,en", "--sites", "L0", "--pool", "weighted", "-o", str(out),
            "--no-progress", *extra,
        ]  # fmt: skip
        assert main(argv) == 0
        return xlalign.load_run(out)

    single_exact = run("b1", "--batch-size", "1")
    single_mexa = run("b1m", "--batch-size", "1", "--compat", "mexa")
    left_exact = run("left", "--batch-size", "6", "--padding-side", "left")
    left_mexa = run("leftm", "--batch-size", "6", "--padding-side", "left", "--compat", "mexa")
    key = ("zh", "L0", "weighted")
    np.testing.assert_allclose(single_mexa[key], single_exact[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(left_exact[key], single_exact[key], rtol=1e-4, atol=1e-5)
    assert np.abs(left_mexa[key] - single_exact[key]).max() > 1e-3
    manifest = json.loads((tmp_path / "leftm" / "manifest.json").read_text())
    assert manifest["compat"] == "mexa"
    assert "padded batch" in manifest["pool_info"]["weighted"]
    assert main([*["extract", "--model", str(tiny_models["qwen2"])], "--data", str(data),
                 "-o", str(tmp_path / "bad"), "--compat", "platonic"]) != 0  # fmt: skip
