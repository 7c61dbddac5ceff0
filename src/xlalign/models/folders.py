"""Checks of a local model folder before transformers reads it: config, weights and tokenizer files present and readable."""

from __future__ import annotations

import json
from pathlib import Path

from xlalign.errors import XlalignError

#: Files from which ``AutoTokenizer`` builds a tokenizer (any one of these groups is enough).
TOKENIZER_FILES = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
    ("spiece.model",),
    ("sentencepiece.bpe.model",),
    ("vocab.model",),
    ("spm.model",),  # DeBERTa-v2/v3
    ("sentencepiece.model",),  # RemBERT
)


def check_model_folder(folder: Path, *, weights: bool = True) -> None:
    """Raise :class:`XlalignError` naming the file when a local model folder cannot be used.

    Checks that tokenizer files exist (without them ``AutoTokenizer`` may build an empty
    tokenizer, and every prompt "tokenises to no tokens") and, with ``weights``, that every
    ``*.safetensors`` file is whole: its header parses and the file holds every byte the
    header's offsets point to (a truncated download otherwise fails deep inside safetensors).
    """
    has_tokenizer = (
        any(all((folder / n).is_file() for n in g) for g in TOKENIZER_FILES)
        or any(
            folder.glob("*.gguf")  # a GGUF file carries its tokenizer
        )
        or any(folder.glob("*.tiktoken"))
    )
    if not has_tokenizer:
        wanted = ", ".join(" + ".join(g) for g in TOKENIZER_FILES)
        raise XlalignError(
            f"model folder '{folder}' has no tokenizer files (looked for {wanted}); save the "
            "tokenizer into the folder (tokenizer.save_pretrained(folder))"
        )
    if not weights:
        return
    for path in sorted(folder.glob("*.safetensors")):
        problem = _safetensors_problem(path)
        if problem:
            raise XlalignError(
                f"model file '{path}' is {problem}; download or save the model again"
            )


def _safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file at ``path`` is unusable (truncated, bad header), or None."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes, not even a header)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"truncated: its header alone needs {n + 8} bytes, the file has {size}"
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "corrupt: its header is not valid JSON"
    if not isinstance(header, dict):
        return "corrupt: its header is not a JSON object"
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    needed = 8 + n + max(ends, default=0)
    if needed > size:
        return f"truncated: {size} of {needed} bytes"
    return None
