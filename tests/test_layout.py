"""The source layout (docs/architecture.md): one package per stage, no import cycles, old paths kept.

The layering itself (no module imports a stage above its own) is the import-linter contract in
pyproject.toml, run by ``make check``; these tests check what that contract cannot: that there
is no cycle anywhere, even inside a package, that the top folder holds only the stage packages,
and that every import path of the flat layout still reaches the same objects.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import xlalign

PACKAGE = Path(xlalign.__file__).resolve().parent

#: Public names of each module of the flat layout before the move (read from that commit's
#: sources, 6189093): users may have imported any of them from these paths.
OLD_PUBLIC_NAMES = {
    "xlalign.capture": (
        "Batch",
        "EXTRACT_COMPAT",
        "ExtractConfig",
        "PADDING_SIDES",
        "RESUME_KEYS",
        "SiteCapture",
        "ZeroNormWarning",
        "extract",
        "forward_kwargs",
        "forward_params",
        "make_batch",
        "pad_id_of",
        "plan_batches",
        "resume_diffs",
        "to_numpy",
        "tokenize",
    ),
    "xlalign.corpus": (
        "ID_COLUMN",
        "LANG_CODE",
        "ParallelCorpus",
        "SkippedRow",
        "TABLE_SUFFIXES",
        "load_corpus",
        "load_hf_dataset",
    ),
    "xlalign.corpora": (
        "BUILTIN",
        "DEFAULT_SHOTS",
        "HSK_INSTALL",
        "LANGUAGE_NAMES",
        "LICENCES",
        "WordPair",
        "clean_gloss",
        "hsk",
        "hsk_records",
        "hsk_word_pairs",
        "is_single_token",
        "load_builtin",
        "translate_words",
        "translation_prompt",
    ),
    "xlalign.problems": ("CATEGORIES", "Problem", "generate_problems"),
    "xlalign.tokens": (
        "TOKEN_CLASSES",
        "TokenClassifier",
        "classify_text",
        "decode_token",
        "is_cjk",
        "special_ids",
        "vocabulary_classes",
    ),
    "xlalign.lexical": ("LEXICAL_SITE", "MAX_ENTRIES", "bag_of_ids", "n_entries"),
    "xlalign.named_models": (
        "NAMED_MODELS",
        "NamedModel",
        "Resolved",
        "assemble_chunks",
        "is_named",
        "model_folder",
        "resolve_named",
    ),
    "xlalign.checkpoints": (
        "CACHE_ENV",
        "FLOAT_TYPES",
        "GGUF_INSTALL",
        "GgufInfo",
        "INFO_FILE",
        "cache_dir",
        "cached",
        "dequantized_folder",
        "file_sha256",
        "find_gguf",
        "read_gguf_types",
    ),
    "xlalign.testing": (
        "BERT_SPECIALS",
        "QWEN2_SPECIALS",
        "QWEN2_SPLIT",
        "TINY_ARCHS",
        "build_tiny_model",
        "corpus_texts",
        "tiny_config",
        "train_byte_bpe",
        "train_wordpiece",
        "write_gguf",
    ),
    "xlalign.models": (
        "DTYPES",
        "ENCODER_FAMILIES",
        "FAMILIES",
        "FamilyPaths",
        "HUB_MISS_HINT",
        "LensModules",
        "LoadedModel",
        "ModelAdapter",
        "ModelOptions",
        "PADDING_OFFSET_FAMILIES",
        "TOKENIZER_FILES",
        "check_hub_reachable",
        "check_model_folder",
        "detect_special_tokens",
        "device_map_summary",
        "dtype_name",
        "input_device",
        "is_causal_lm_config",
        "lens_modules",
        "load_model",
        "load_tokenizer",
        "resolve_adapter",
        "resolve_device",
        "resolve_dtype",
        "state_dict_fingerprint",
        "tokenizer_fingerprint",
        "weights_fingerprint",
        "wrap_model",
    ),
    "xlalign.lock": (
        "LOCK_FILE",
        "PROBE_PREFIX",
        "acquire",
        "busy_message",
        "folder_lock",
        "holder",
        "holds",
        "release",
    ),
    "xlalign.synthetic": ("synthetic_sites", "write_synthetic_run"),
    "xlalign.sites": (
        "EMBED",
        "FINAL",
        "available_sites",
        "describe_sites",
        "layer_site",
        "parse_sites",
        "site_depth",
        "sort_sites",
    ),
    "xlalign.store": (
        "ARRAYS_DIR",
        "CONTROL_DIR",
        "CORPUS_FILE",
        "DISK_FULL_ERRNOS",
        "FLUSH_INTERVAL_S",
        "FORMAT",
        "FORMAT_VERSION",
        "LegacyPools",
        "MANIFEST",
        "META",
        "PROGRESS",
        "PROGRESS_DIR",
        "Run",
        "RunWriter",
        "TOKENIZER_DIR",
        "TOKENS_DIR",
        "TOKEN_POOL",
        "TokenData",
        "array_path",
        "atomic_write_json",
        "check_free_space",
        "clear_folder",
        "disk_full_error",
        "export_npz",
        "json_safe",
        "legacy_pools",
        "load_run",
        "prepare_folder",
        "progress_files",
        "rank_sessions",
        "read_json",
        "read_progress",
        "reserve_space",
        "token_paths",
    ),
    "xlalign.pooling": (
        "POOLS",
        "POOL_DESCRIPTIONS",
        "POOL_SEMANTICS",
        "PoolPlan",
        "VECTOR_POOLS",
        "WEIGHTED_ABSOLUTE_DESCRIPTION",
        "WEIGHTED_POSITIONS",
        "check_eos",
        "make_plan",
        "parse_pools",
        "pool",
    ),
    "xlalign.distributed": (
        "DEFAULT_TIMEOUT_S",
        "Group",
        "LaunchEnv",
        "SHARD_BY",
        "assign_batches",
        "launch_env",
        "parse_max_memory",
        "rank_device",
        "rank_gpus",
        "rank_max_memory",
        "run_on_main",
        "wait_until",
    ),
    "xlalign.studies.pipeline": (
        "CONFIG_FIELDS",
        "STUDY_POOLS",
        "StageClock",
        "StudyConfig",
        "bundled_model_path",
        "config_from_mapping",
        "config_to_toml",
        "ensure_run",
        "load_config_file",
        "run_align",
        "run_corpus",
        "run_origin",
        "run_study",
        "source_lines",
        "study_corpus",
        "study_findings",
    ),
    "xlalign.demo": (
        "DEFAULT_HSK_PAIRS",
        "DEFAULT_MODEL",
        "DemoConfig",
        "LABELS",
        "answer",
        "run_demo",
    ),
    "xlalign.clidoc": ("cli_reference",),
}


STAGES = {"data", "models", "store", "capture", "metrics", "studies", "pipeline", "report"}


def _import_graph() -> dict[str, set[str]]:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("xlalign")
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    # the checker itself, on a graph with one known cycle and one self-contained chain
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_anywhere():
    assert _cycles(_import_graph()) == []


def test_top_folder_holds_only_the_stage_packages():
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert modules == {"__init__.py", "__main__.py", "cli.py", "errors.py"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == STAGES


def test_lower_stages_never_import_the_cli_or_the_pipeline():
    graph = _import_graph()
    below = [m for m in graph if m.split(".")[1:2] and m.split(".")[1] in STAGES - {"pipeline"}]
    offenders = [
        (m, t)
        for m in below
        for t in graph[m]
        if t == "xlalign" or t.startswith(("xlalign.cli", "xlalign.pipeline"))
    ]
    assert offenders == []


@pytest.mark.parametrize("old", sorted(OLD_PUBLIC_NAMES))
def test_old_import_paths_reach_every_name(old):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(old)
    missing = [name for name in OLD_PUBLIC_NAMES[old] if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("old", sorted(xlalign.MOVED))
def test_a_moved_module_warns_with_its_new_path(old):
    # a fresh interpreter: the warning comes when the old path is first imported
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        f"try:\n    import {old}\nexcept DeprecationWarning as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{old} moved to {xlalign.MOVED[old]}; import it from there"


def test_a_moved_module_is_the_new_module_itself():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old_corpora = importlib.import_module("xlalign.corpora")
        old_lock = importlib.import_module("xlalign.lock")
    from xlalign.data import corpora
    from xlalign.store import lock

    assert old_corpora is corpora and xlalign.corpora is corpora
    assert old_lock is lock


def test_a_name_that_never_existed_names_the_new_module():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module("xlalign.pooling")
        with pytest.raises(ImportError, match=r"capture/pooling\.py"):
            exec("from xlalign.pooling import no_such_name", {})


def test_the_documented_paths_are_the_same_objects():
    from xlalign.capture import extract
    from xlalign.capture.engine import extract as engine_extract
    from xlalign.metrics import matched_vs_scrambled_z
    from xlalign.metrics.permutation import matched_vs_scrambled_z as z
    from xlalign.studies.layers import SweepConfig, layer_sweep  # noqa: F401

    assert extract is engine_extract is xlalign.extract
    assert matched_vs_scrambled_z is z
    assert xlalign.corpora.hsk is importlib.import_module("xlalign.data.corpora").hsk
    for name in xlalign.__all__:
        assert getattr(xlalign, name) is not None


def test_monkeypatching_an_old_path_reaches_the_new_module(monkeypatch):
    import xlalign.capture.pooling as new

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = importlib.import_module("xlalign.pooling")
    marker = object()
    monkeypatch.setattr(old, "_matmul_is_exact_fp32", marker)
    assert new._matmul_is_exact_fp32 is marker


def test_a_moved_module_keeps_its_own_spec():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module("xlalign.tokens")
    from xlalign.data import tokens

    assert tokens.__spec__.name == "xlalign.data.tokens"
    assert importlib.reload(tokens) is tokens


def test_python_m_clidoc_still_prints_the_cli_reference():
    from xlalign.cli import cli_reference

    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "xlalign.clidoc"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == cli_reference()
