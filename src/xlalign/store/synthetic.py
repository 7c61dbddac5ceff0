"""Synthetic run folders for scale tests and benchmarks, written to disk block by block.

:func:`write_synthetic_run` lays out a complete run (manifest, ``meta.json``, per-language
token files and ``arrays/<lang>/<site>/<pool>.npy``) whose vectors are pairs with a shared
signal: for pair ``i`` a latent ``z_i`` (``n_latent`` dims), and per language and site
``v_i = z_i W + noise * e_i + mu`` with ``W`` mostly shared by the languages, float32, with a large language mean ``mu`` as
hidden states have. Rows are generated and written ``block_rows`` at a time, so a
``(1_000_000, 1024)`` site costs one block of memory, not 4 GB; every block comes from its own
generator seeded by ``(seed, block index)``, so the same ``seed`` and ``block_rows`` give the
same run.

Sites can share one file (``share_sites=True``: hard links) when the disk cannot hold every
site: the sweep still reads and computes each site separately.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.store.files import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    META,
    array_path,
    atomic_write_json,
    token_paths,
)
from xlalign.store.pools import POOL_SEMANTICS


def synthetic_sites(n_sites: int) -> list[str]:
    """``embed, L0, ..., L{n_sites-2}``: the names of ``n_sites`` sites in depth order."""
    if n_sites < 1:
        raise ValueError(f"n_sites must be at least 1, got {n_sites}")
    return ["embed", *(f"L{i}" for i in range(n_sites - 1))]


def write_synthetic_run(
    path: str | Path,
    n: int,
    d: int,
    *,
    n_sites: int = 2,
    langs: Sequence[str] = ("zh", "en"),
    pools: Sequence[str] = ("last",),
    n_latent: int = 64,
    noise: float = 1.0,
    seed: int = 0,
    block_rows: int = 65536,
    share_sites: bool = False,
    categories: int = 5,
) -> Path:
    """Write a complete synthetic run of ``n`` rows x ``d`` dims to ``path``; returns it.

    Site ``s`` of language ``l`` uses its own mixing matrix and mean, so sites differ; with
    ``share_sites`` every site is a hard link to the first site's file (same numbers, one
    copy on disk). ``meta.json`` has a ``category`` column (``i % categories``).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sites = synthetic_sites(n_sites)
    root = np.random.default_rng(seed)
    # A mixing matrix per site, shared by the languages up to a small language-specific part,
    # so pair i is closer to its partner than to other rows (positive z, P@1 well above chance).
    shared = {site: root.standard_normal((n_latent, d)).astype(np.float32) for site in sites}
    latent_w = {
        (lang, site): (shared[site] + 0.3 * root.standard_normal((n_latent, d)).astype(np.float32))
        / np.float32(np.sqrt(n_latent))
        for site in sites
        for lang in langs
    }
    means = {key: 3 * root.standard_normal(d).astype(np.float32) for key in latent_w}
    for lang in langs:
        for k, site in enumerate(sites):
            for pool in pools:
                target = array_path(path, lang, site, pool)
                target.parent.mkdir(parents=True, exist_ok=True)
                if share_sites and k > 0:
                    first = array_path(path, lang, sites[0], pool)
                    target.unlink(missing_ok=True)
                    os.link(first, target)
                    continue
                out = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=(n, d))
                w, mu = latent_w[(lang, site)], means[(lang, site)]
                for b, start in enumerate(range(0, n, block_rows)):
                    stop = min(n, start + block_rows)
                    # the latent block depends on (seed, block) only: shared by every language
                    z = np.random.default_rng([seed, b]).standard_normal(
                        (stop - start, n_latent), dtype=np.float32
                    )
                    e = np.random.default_rng([seed, b, 1 + langs.index(lang), k]).standard_normal(
                        (stop - start, d), dtype=np.float32
                    )
                    out[start:stop] = z @ w + noise * e + mu
                out.flush()
                del out
    _write_metadata(path, n, d, sites, list(langs), list(pools), categories)
    return path


def _write_metadata(
    path: Path,
    n: int,
    d: int,
    sites: list[str],
    langs: list[str],
    pools: list[str],
    categories: int,
) -> None:
    ids = [str(i) for i in range(n)]
    # One token per prompt keeps the token files valid and tiny; each prompt's token is its own
    # (no two prompts are the same input, and no language shares a token with another)
    offsets = np.arange(n + 1, dtype=np.int64)
    for k, lang in enumerate(langs):
        ids_p, off_p, spec_p = token_paths(path, lang)
        ids_p.parent.mkdir(parents=True, exist_ok=True)
        np.save(ids_p, (np.arange(n, dtype=np.int64) + k * n).astype(np.int32))
        np.save(off_p, offsets)
        np.save(spec_p, np.zeros(n, dtype=bool))
    atomic_write_json(
        path / META, {"ids": ids, "columns": {"category": [i % categories for i in range(n)]}}
    )
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": True,
        "model": "synthetic",
        "n_layers": max(1, len(sites) - 1),
        "d_model": d,
        "sites": sites,
        "pools": pools,
        "pool_semantics": POOL_SEMANTICS,
        "languages": langs,
        "n_rows": n,
        "ids": ids,
        "meta_columns": ["category"],
    }
    atomic_write_json(path / MANIFEST, manifest)
