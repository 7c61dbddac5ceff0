"""xlalign: layer-by-layer cross-lingual alignment of transformer hidden states."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import sys
import types
import warnings
from typing import TYPE_CHECKING, Any

from xlalign.data import corpora
from xlalign.data.corpus import ParallelCorpus, load_corpus
from xlalign.data.problems import generate_problems
from xlalign.errors import XlalignError

if TYPE_CHECKING:
    from xlalign.capture.engine import extract
    from xlalign.pipeline.stages import neurons
    from xlalign.store.run import load_run
    from xlalign.studies.compare import compare
    from xlalign.studies.steer import steer

try:  # one source: pyproject.toml's version, as installed
    __version__ = importlib.metadata.version("xlalign")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "ParallelCorpus",
    "XlalignError",
    "__version__",
    "compare",
    "corpora",
    "extract",
    "generate_problems",
    "load_corpus",
    "load_run",
    "neurons",
    "steer",
]


#: Modules that moved when the source tree was split into one package per stage, with the
#: module that now holds what each held. ``import xlalign.corpus`` still works: it warns
#: (DeprecationWarning) naming the new path and gives the new module itself, so monkeypatching
#: the old path reaches it. ``xlalign.studies.pipeline`` gives the package ``xlalign.pipeline``,
#: which exports every name the old module had; patch the module that uses a name.
MOVED: dict[str, str] = {
    "xlalign.corpus": "xlalign.data.corpus",
    "xlalign.corpora": "xlalign.data.corpora",
    "xlalign.problems": "xlalign.data.problems",
    "xlalign.tokens": "xlalign.data.tokens",
    "xlalign.lexical": "xlalign.data.lexical",
    "xlalign.named_models": "xlalign.models.named",
    "xlalign.checkpoints": "xlalign.models.gguf",
    "xlalign.testing": "xlalign.models.testing",
    "xlalign.lock": "xlalign.store.lock",
    "xlalign.sites": "xlalign.store.sites",
    "xlalign.synthetic": "xlalign.store.synthetic",
    "xlalign.pooling": "xlalign.capture.pooling",
    "xlalign.distributed": "xlalign.capture.distributed",
    "xlalign.demo": "xlalign.pipeline.demo",
    "xlalign.studies.pipeline": "xlalign.pipeline",
    "xlalign.clidoc": "xlalign.cli",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module paths of :data:`MOVED` and gives the modules that hold them now."""

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        warnings.warn(
            f"{spec.name} moved to {MOVED[spec.name]}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # importlib gave the module the old path's spec: give it back its own
        spec = module.__spec__
        assert spec is not None
        module.__spec__ = self._specs[spec.name]

    def get_code(self, fullname: str) -> Any:
        """``python -m <old path>`` runs the new module as ``__main__``."""
        if fullname == "xlalign.clidoc":  # it printed the CLI reference
            source = "from xlalign.cli import cli_reference; print(cli_reference(), end='')"
        else:
            source = f"import runpy; runpy.run_module({MOVED[fullname]!r}, run_name='__main__')"
        return compile(source, f"<{fullname}, moved to {MOVED[fullname]}>", "exec")


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())


def __getattr__(name: str) -> Any:
    # torch loads only when capture is used, so `xlalign --help` and the metrics stay quick
    if name == "extract":
        from xlalign.capture.engine import extract

        return extract
    if name == "load_run":
        from xlalign.store.run import load_run

        return load_run
    if name == "neurons":
        from xlalign.pipeline.stages import neurons

        return neurons
    if name == "steer":
        from xlalign.studies.steer import steer

        return steer
    if name == "compare":
        from xlalign.studies.compare import compare

        return compare
    raise AttributeError(f"module 'xlalign' has no attribute {name!r}")
