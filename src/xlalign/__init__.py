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
    from xlalign.store.run import load_run
    from xlalign.studies.compare import compare

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
]


#: Modules that moved when the source tree was split into stage packages (one per stage), with
#: the modules that now hold what they held. ``import xlalign.corpus`` still works: it warns
#: (DeprecationWarning) naming the new path and gives the new module itself; where two modules
#: now share the old one's names, a module that looks each name up in them in order.
MOVED: dict[str, tuple[str, ...]] = {
    "xlalign.corpus": ("xlalign.data.corpus",),
    "xlalign.corpora": ("xlalign.data.corpora",),
    "xlalign.problems": ("xlalign.data.problems",),
    "xlalign.tokens": ("xlalign.data.tokens",),
    "xlalign.lexical": ("xlalign.data.lexical",),
    "xlalign.named_models": ("xlalign.models.named",),
    "xlalign.checkpoints": ("xlalign.models.gguf",),
    "xlalign.testing": ("xlalign.models.testing",),
    "xlalign.lock": ("xlalign.store.lock",),
    "xlalign.sites": ("xlalign.store.sites",),
    "xlalign.synthetic": ("xlalign.store.synthetic",),
    "xlalign.pooling": ("xlalign.capture.pooling", "xlalign.store.pools"),
    "xlalign.distributed": ("xlalign.capture.distributed",),
    "xlalign.demo": ("xlalign.pipeline.demo",),
    "xlalign.studies.pipeline": ("xlalign.pipeline",),
    "xlalign.clidoc": ("xlalign.cli",),
}


class _MovedModule(types.ModuleType):
    """An old module path: every attribute is looked up in the modules that now hold it."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"moved to {', '.join(targets)}")
        self._targets = targets

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(
            f"{self.__name__} moved to {' and '.join(self._targets)}, which hold no {attr!r}"
        )

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self._targets:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module paths of :data:`MOVED`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        targets = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {' and '.join(targets)}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        if len(targets) == 1:  # the module itself: monkeypatching the old path reaches it
            return importlib.import_module(targets[0])
        module = _MovedModule(spec.name, targets)
        # ImportError names a module's file: "cannot import name 'x' from 'xlalign.pooling'
        # (.../capture/pooling.py)" points at where it went
        module.__file__ = importlib.import_module(targets[0]).__file__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


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
    if name == "compare":
        from xlalign.studies.compare import compare

        return compare
    raise AttributeError(f"module 'xlalign' has no attribute {name!r}")
