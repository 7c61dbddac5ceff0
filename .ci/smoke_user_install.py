"""A user's install, checked: the README's main command's extras alone load a GGUF and capture.

`.ci/run` installs a clean virtual environment with exactly the README's main-job install
(`pip install torch==2.13.0 -e '.[demo]'`, no dev dependencies) and runs this script in it:
it writes a tiny Qwen2 model as a GGUF file (with the `gguf` package the `demo` extra installs),
then runs `xlalign extract` on it, which loads it through transformers' GGUF reader exactly as
`--model qwen2.5-0.5b` does. A missing runtime dependency of an extra (transformers needs
`accelerate` for GGUF) fails here, where the test suite, which has every dev dependency, cannot.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> int:
    present = [m for m in ("pytest", "mypy", "ruff", "importlinter") if importlib.util.find_spec(m)]
    if present:
        print(f"smoke: dev dependencies present ({', '.join(present)}): not a user's install")
        return 1
    from xlalign.cli import main as xlalign
    from xlalign.data.problems import generate_problems
    from xlalign.models.testing import build_tiny_model, corpus_texts, train_byte_bpe, write_gguf

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = generate_problems(20, seed=42)
        tokenizer = train_byte_bpe(corpus_texts([corpus]), vocab_size=400)
        folder = build_tiny_model("qwen2", tokenizer, root / "tiny")
        gguf_file = write_gguf(folder, root / "tiny.gguf")
        data = corpus.to_jsonl(root / "problems.jsonl")
        os.environ["XLALIGN_CACHE"] = str(root / "cache")
        argv = ["extract", "--model", str(gguf_file), "--data", str(data), "--langs", "zh,en",
                "--sites", "embed,L0", "-o", str(root / "run"), "--no-progress"]  # fmt: skip
        code = xlalign(argv)
        if code != 0:
            print(f"smoke: xlalign extract of a GGUF file failed (exit {code})")
            return code
    print("smoke: the demo extra alone loads a GGUF file and captures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
