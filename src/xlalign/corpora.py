"""Built-in corpora: parallel text built offline from data packages on PyPI.

- :func:`hsk_records`: the raw records of ``hsk-sentences-audio`` 1.0.0 (4,354 graded HSK
  sentences with word-by-word glosses; data CC-BY-SA-4.0, attribute when redistributing).
- :func:`translate_words`: word-translation prompts for the logit lens, in the few-shot format
  of Wendler et al. 2024 ("Do Llamas Work in English?", github.com/epfl-dlab/llm-latent-language),
  built from the HSK word glosses, both directions, single-token answers only.

Install the data with ``pip install 'xlalign[hsk]'`` (the package ``hsk-sentences-audio``).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from xlalign.corpus import ParallelCorpus
from xlalign.errors import XlalignError
from xlalign.tokens import is_cjk

HSK_PACKAGE = "hsk_sentences_audio"
HSK_REQUIREMENT = "hsk-sentences-audio==1.0.0"

#: Demonstrations before each query in :func:`translate_words` (Wendler et al. use a few).
DEFAULT_SHOTS = 4
#: How each language is named in the prompts.
LANGUAGE_NAMES = {"zh": "中文", "en": "English"}


def hsk_records() -> list[dict[str, Any]]:
    """The HSK sentence records (``hsk_sentences_audio/data/sentences.json``) as a list.

    Each record has ``id``, ``hsk_level`` (1-6), ``chinese``, ``translation.en``, ``tokens``
    (``word``, ``pinyin``, ``gloss_en``) and more. Raises :class:`XlalignError` with the pip
    command when the package is missing.
    """
    try:
        root = resources.files(HSK_PACKAGE)
    except ModuleNotFoundError:
        raise XlalignError(
            f"the HSK data needs the package {HSK_REQUIREMENT}: pip install 'xlalign[hsk]' "
            f"(or pip install {HSK_REQUIREMENT})"
        ) from None
    path = root / "data" / "sentences.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise XlalignError(f"cannot read {path} from {HSK_REQUIREMENT}: {e}") from None
    if not isinstance(data, list):
        raise XlalignError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class WordPair:
    """A Chinese word and a one-word English gloss of it, with the HSK level it first shows at."""

    zh: str
    en: str
    hsk_level: int | None = None


_PARENS = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_ONE_WORD = re.compile(r"[A-Za-z]{2,}")
_CROSS_REFERENCES = ("surname", "used in", "variant of", "old variant", "abbr", "see ")


def clean_gloss(gloss: str) -> str | None:
    """The English word that ``gloss`` gives as its main sense, else None.

    Senses are split at ``;``. Cross-references (``surname ...``, ``used in ...``,
    ``variant of ...``, ``abbr. ...``, ``see ...``) are passed over; the first other sense
    decides: it is kept if, without a leading ``to`` and trailing brackets, it is one word
    (``"to thank; thanks"`` -> ``thank``). A sense that opens with a qualifier in parentheses
    (``"(of an animal) to paw"``, ``"(classical) to say"``) is not a main sense: None.
    """
    for sense in gloss.split(";"):
        sense = sense.strip()
        if not sense or sense.lower().startswith(_CROSS_REFERENCES):
            continue
        if sense.startswith(("(", "[")):
            return None
        sense = _PARENS.sub("", sense).strip()
        if sense.startswith("to "):
            sense = sense[3:].strip()
        return sense if _ONE_WORD.fullmatch(sense) else None
    return None


def hsk_word_pairs(records: Sequence[dict[str, Any]] | None = None) -> list[WordPair]:
    """Chinese words of the HSK records with a one-word English gloss, in order of appearance.

    A word is kept once (its first gloss); an English gloss already taken by an earlier word is
    skipped, so each direction has one right answer. Chinese words must be CJK characters only.
    """
    pairs: list[WordPair] = []
    seen_zh: set[str] = set()
    seen_en: set[str] = set()
    for rec in records if records is not None else hsk_records():
        for tok in rec.get("tokens") or []:
            zh = str(tok.get("word") or "").strip()
            if not zh or zh in seen_zh or not all(is_cjk(c) for c in zh):
                continue
            seen_zh.add(zh)
            en = clean_gloss(str(tok.get("gloss_en") or ""))
            if en is None or en.lower() in seen_en:
                continue
            seen_en.add(en.lower())
            level = rec.get("hsk_level")
            pairs.append(WordPair(zh, en, int(level) if isinstance(level, int) else None))
    return pairs


def is_single_token(tokenizer: Any, text: str) -> bool:
    """True when ``text`` alone (no special tokens) is one token of ``tokenizer``."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1


def _line(src: str, src_word: str, tgt: str, tgt_word: str | None) -> str:
    answer = f'{tgt_word}"' if tgt_word is not None else ""
    return f'{LANGUAGE_NAMES[src]}: "{src_word}" - {LANGUAGE_NAMES[tgt]}: "{answer}'


def translation_prompt(demos: Sequence[WordPair], query: WordPair, source: str, target: str) -> str:
    """Wendler et al.'s few-shot prompt: ``source: "w" - target: "t"`` lines, then the query.

    The prompt ends right after the opening quote of the target word, so the next token is the
    answer's first token.
    """
    lines = [_line(source, getattr(d, source), target, getattr(d, target)) for d in demos]
    lines.append(_line(source, getattr(query, source), target, None))
    return "\n".join(lines)


def translate_words(
    tokenizer: Any,
    n: int | None = None,
    *,
    seed: int = 0,
    shots: int = DEFAULT_SHOTS,
    records: Sequence[dict[str, Any]] | None = None,
) -> ParallelCorpus:
    """Word-translation prompts from the HSK glosses, both directions, one row per word.

    Column ``zh`` holds the English -> Chinese prompt (its answer is the Chinese word), column
    ``en`` the Chinese -> English prompt (answer: the English word); each row has the same
    ``shots`` demonstrations in both, drawn from the other kept words. Metadata columns:
    ``answer_zh``, ``answer_en`` (read by the logit lens) and ``hsk_level``. Only words whose
    Chinese and English forms are each a single token of ``tokenizer`` are kept, so the lens
    tracks the whole answer; the counts are in the corpus ``source``
    (``kept K of N words``). ``n`` caps the rows (a random subset, ``random.Random(seed)``).
    """
    if shots < 0:
        raise XlalignError(f"shots must be at least 0, got {shots}")
    if n is not None and n < 1:
        raise XlalignError(f"--n must be at least 1, got {n}")
    pairs = hsk_word_pairs(records)
    kept = [
        p for p in pairs if is_single_token(tokenizer, p.zh) and is_single_token(tokenizer, p.en)
    ]
    if len(kept) < shots + 1:
        raise XlalignError(
            f"only {len(kept)} of {len(pairs)} HSK words are single tokens in both languages "
            f"for this tokenizer; {shots + 1} are needed ({shots} demonstrations + a query)"
        )
    rng = random.Random(seed)
    order = list(range(len(kept)))
    rng.shuffle(order)
    chosen = order if n is None else order[:n]
    ids, zh, en, ans_zh, ans_en, levels = [], [], [], [], [], []
    for k in chosen:
        query = kept[k]
        others = [j for j in range(len(kept)) if j != k]
        demos = [kept[j] for j in rng.sample(others, shots)]
        ids.append(f"w{k:04d}")
        zh.append(translation_prompt(demos, query, "en", "zh"))
        en.append(translation_prompt(demos, query, "zh", "en"))
        ans_zh.append(query.zh)
        ans_en.append(query.en)
        levels.append(query.hsk_level)
    return ParallelCorpus(
        ids=tuple(ids),
        texts={"zh": tuple(zh), "en": tuple(en)},
        meta={
            "answer_zh": tuple(ans_zh),
            "answer_en": tuple(ans_en),
            "hsk_level": tuple(levels),
        },
        source=(
            f"{HSK_REQUIREMENT} translate-words (kept {len(kept)} of {len(pairs)} words: "
            f"single tokens in both languages; {len(chosen)} rows, {shots} shots, seed {seed})"
        ),
    )
