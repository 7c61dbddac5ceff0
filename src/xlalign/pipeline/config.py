"""A study's configuration: :class:`StudyConfig`, read from ``--config study.toml`` and the flags, saved as ``config.toml``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xlalign.data.corpus import ParallelCorpus, load_corpus
from xlalign.errors import XlalignError
from xlalign.models.loading import ModelOptions
from xlalign.studies.layers import DEFAULT_METRICS, SweepConfig
from xlalign.studies.neurons import NeuronsConfig
from xlalign.studies.steer import SteerConfig


@dataclass(frozen=True)
class StudyConfig:
    """One study, end to end (every field is an ``xlalign run`` flag and a ``--config`` key)."""

    model: str = ""
    """Hub id or local folder of the model."""
    data: str | None = None
    """Parallel corpus file or folder, or a built-in corpus: hsk (or use ``problems``)."""
    data_n: int | None = None
    """With a built-in --data: use this many rows (hsk: drawn by level with --seed)."""
    problems: int | None = None
    """Use the study's generated problem set with this many problems instead of ``data``."""
    problems_seed: int = 42
    """Seed of the generated problem set."""
    langs: tuple[str, ...] = ()
    """Languages (default: all in the corpus; the origin study uses the first two)."""
    output: str = "runs/study"
    """Study folder."""
    sites: str = "all"
    """Sites to capture."""
    batch_size: int = 32
    """Prompts per forward pass."""
    device: str = "auto"
    """cpu, cuda or auto."""
    dtype: str | None = None
    """float32, bfloat16 or float16 (default: fp32 on CPU, bf16 on CUDA)."""
    revision: str | None = None
    """Hub revision of the model."""
    trust_remote_code: bool = False
    """Run the model repository's own code (off unless asked)."""
    metrics: tuple[str, ...] = DEFAULT_METRICS
    """Sweep metrics."""
    null: str = "exact"
    """Null of the z statistic: exact or monte-carlo."""
    n_perms: int = 1000
    """Monte Carlo permutations."""
    seed: int = 42
    """Seed of the null and the bootstrap."""
    stratify: str | None = None
    """Metadata column for a stratified null in the sweep."""
    center: bool = False
    """Remove each language's mean vector in the sweep."""
    standardize: bool = False
    """z-score each dimension over both languages' rows before the sweep (rogue dimensions)."""
    pivot: str | None = None
    """Compare each language with this one only."""
    n_boot: int = 200
    """Confidence intervals (0: none); the lens and neurons resample this many times."""
    null_perms: int = 1000
    """Scrambled pairings of every similarity's permutation null in the sweep (0: none)."""
    backend: str = "auto"
    """Array library of the sweep's metrics: numpy, torch, or auto (torch where CUDA is present)."""
    control: str | None = "random-init"
    """random-init adds the random-weights control; none turns it off."""
    control_seed: int = 0
    """Seed of the random-weights control."""
    heatmap_site: str | None = None
    """Site of the similarity heatmap (default: the site with the highest mean-pool z)."""
    report: bool = True
    """Write report.html and report.md."""
    lens: bool = True
    """Run the logit-lens stage (causal LMs; encoders skip it with the reason)."""
    neurons: bool = True
    """Run the language-neuron stage (decoders with a gated or plain MLP; others skip it)."""
    neurons_top_rate: float = 0.01
    """Share of all feed-forward neurons LAPE selects (the paper's 0.01)."""
    neurons_max_eval: int = 100
    """Held-out prompts per language in the neuron ablation."""
    steer: str | None = None
    """Steering stage, asked for as FROM:TO (e.g. en:zh; causal LMs; off unless given)."""
    label: str | None = None
    """Name of the model in the report and summary (default: the model id or path)."""

    def __post_init__(self) -> None:
        if not self.model:
            raise XlalignError("--model is required (a Hub id or a local model folder)")
        if (self.data is None) == (self.problems is None):
            raise XlalignError("give exactly one of --data FILE and --problems N")
        if self.langs and len(self.langs) < 2:
            raise XlalignError(f"--langs needs at least two languages, got {','.join(self.langs)}")
        if self.problems is not None and self.problems < 15:
            raise XlalignError(
                f"--problems must be at least 15 (3 per category), got {self.problems}"
            )
        if self.control not in (None, "none", "random-init"):
            raise XlalignError(f"--control must be random-init or none, got '{self.control}'")
        if self.batch_size < 1:
            raise XlalignError(f"--batch-size must be at least 1, got {self.batch_size}")
        self.sweep_config()  # checks the sweep's options now, before any forward pass
        self.neurons_config()
        self.steer_config()

    def model_options(self) -> ModelOptions:
        """How this study loads its model (the control adds its ``random_init_seed``)."""
        return ModelOptions(
            dtype=self.dtype, device=self.device, revision=self.revision,
            trust_remote_code=self.trust_remote_code,
        )  # fmt: skip

    def neurons_config(self) -> NeuronsConfig:
        """The neuron stage's part of this study."""
        return NeuronsConfig(
            top_rate=self.neurons_top_rate, max_eval=self.neurons_max_eval, seed=self.seed,
            n_boot=max(self.n_boot, 0), batch_size=min(self.batch_size, 16),
        )  # fmt: skip

    def steer_config(self) -> SteerConfig | None:
        """The steering stage's part of this study (None: not asked for)."""
        if self.steer is None:
            return None
        parts = [p.strip() for p in str(self.steer).split(":")]
        if len(parts) != 2 or not all(parts):
            raise XlalignError(f"--steer takes FROM:TO (e.g. en:zh), got '{self.steer}'")
        return SteerConfig(
            source=parts[0], target=parts[1], seed=self.seed, n_boot=max(self.n_boot, 1),
            device=self.device,
        )  # fmt: skip

    def sweep_config(self) -> SweepConfig:
        """The layer sweep's part of this study."""
        return SweepConfig(
            metrics=self.metrics, null=self.null, n_perms=self.n_perms, seed=self.seed,
            stratify=self.stratify, center=self.center, pivot=self.pivot, n_boot=self.n_boot,
            standardize=self.standardize, backend=self.backend, null_perms=self.null_perms,
        )  # fmt: skip


CONFIG_FIELDS = {f for f in StudyConfig.__dataclass_fields__}


def config_from_mapping(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validate a config file's keys and types; returns the values as StudyConfig kwargs."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(StudyConfig)
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in CONFIG_FIELDS:
            raise XlalignError(
                f"{source}: unknown key '{key}'; known keys: "
                f"{', '.join(sorted(f.name for f in dataclasses.fields(StudyConfig)))}"
            )
        out[name] = _coerce(value, hints[name], f"{source}: key '{key}'")
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    import types
    import typing

    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise XlalignError(f"{where} must be a list of strings, got {value!r}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise XlalignError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise XlalignError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise XlalignError(f"{where} must be a string, got {value!r}")
        return value
    return value


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML study config (top-level keys, or a ``[study]`` table)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if not path.exists():
        raise XlalignError(f"--config {path}: no such file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise XlalignError(f"--config {path}: not valid TOML ({e})") from None
    if "study" in data and isinstance(data["study"], dict):
        data = data["study"]
    return config_from_mapping(data, str(path))


def config_to_toml(cfg: StudyConfig) -> str:
    """The resolved config as TOML that ``--config`` reads back (None values left out)."""
    import tomli_w

    # tomli-w writes any text TOML can hold (non-BMP characters included), escaped correctly.
    values = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in asdict(cfg).items()
        if value is not None
    }
    header = "# resolved configuration of this study (xlalign run --config config.toml)\n"
    return header + tomli_w.dumps(values)


def study_corpus(data: str, n: int | None, seed: int, langs: list[str] | None) -> ParallelCorpus:
    """``--data``: a built-in corpus name (:data:`xlalign.data.corpora.BUILTIN`) or a file/folder."""
    from xlalign.data.corpora import BUILTIN, load_builtin

    if data in BUILTIN and not Path(data).exists():
        corpus = load_builtin(data, n, seed)
        return corpus.select(langs) if langs else corpus
    if n is not None:
        raise XlalignError(f"--data-n goes with a built-in --data ({', '.join(BUILTIN)})")
    return load_corpus(Path(data), langs)
