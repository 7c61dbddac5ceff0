"""Corpus quality checks: rows that are not translations of each other, named with their ids.

A parallel corpus is only as good as its pairing. A handful of rows whose "translation" is a
placeholder, a copy of the source, or text in another script can decide a headline: in the HSK
corpus nine English placeholders among 500 pairs turned a CKA of 0.81 into 0.16. These checks
run whenever a corpus is loaded for a study (:func:`check_corpus`); each kind of problem is one
:class:`QualityIssue` holding the ids it concerns, and none is dropped silently or averaged
away. The checks, for every language ``lang`` of the corpus:

- ``placeholder``: the text is a known placeholder (:data:`PLACEHOLDER`: ``placeholder``,
  ``placeholder-p5``, ``N/A``, ``???``, ...; :data:`PLACEHOLDER_EXACT`, case-sensitive:
  ``PH``, ``TODO``), compared after trimming;
- ``empty``: the text is empty or only white space;
- ``identical``: the text, at least :data:`IDENTICAL_MIN_CHARS` characters long, equals
  another language's text of the same row (case-folded and trimmed) although the languages
  differ: usually left untranslated (short names, numbers and cognates are left alone);
- ``wrong-script``: the text has letters but none in the script its language is written in
  (:func:`expected_script`: from an ISO 15924 suffix such as ``_Latn`` or the language code),
  e.g. English in the Chinese column;
- ``duplicate``: the row's texts, in every language, equal an earlier row's (listed as
  ``id=first``);
- ``length-ratio``: the character-length ratio of the row's two texts (first language against
  each other one) differs from the corpus's median ratio by more than :data:`LENGTH_RATIO`
  times, either way: a truncated or misaligned row (rows whose longer side is under
  :data:`LENGTH_MIN_CHARS` characters are left out). A heuristic: each row it names is worth
  a look, not necessarily wrong.

Nothing here changes the corpus; :func:`xlalign.data.corpora.hsk` drops its known placeholder
rows itself and lists them in :attr:`~xlalign.data.corpus.ParallelCorpus.skipped`.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import log
from typing import TYPE_CHECKING, Any

from xlalign.errors import CorpusQualityWarning

if TYPE_CHECKING:
    from xlalign.data.corpus import ParallelCorpus

__all__ = [
    "KINDS",
    "LENGTH_RATIO",
    "PLACEHOLDER",
    "CorpusQualityWarning",
    "QualityIssue",
    "QualityReport",
    "check_corpus",
    "expected_script",
    "is_placeholder",
    "script_of",
]

#: A text that stands in for a missing translation (matched on the trimmed, case-folded
#: text). Only marks no language uses as a sentence: "todo" (Spanish), "na" (Polish), "null"
#: (German) and "none" are words, so they are not here.
PLACEHOLDER = re.compile(
    r"^(placeholder([-_ ]?[a-z]*\d*)?|tbd|tba|fixme|n/a|untranslated|no translation"
    r"|xxx+|\?{2,}|-{2,}|_{2,}|\.{3,}|…)$"
)
#: Case-sensitive placeholders: the HSK package's "PH" (a word elsewhere, in lower case).
PLACEHOLDER_EXACT = frozenset({"PH", "TODO", "TBD", "N/A"})
#: Identical sides count as untranslated only when this long (names, numbers, "OK" and short
#: cognates are the same in many languages).
IDENTICAL_MIN_CHARS = 10
#: The length-ratio check skips rows whose longer side is shorter than this.
LENGTH_MIN_CHARS = 10
#: A row whose length ratio is this many times the corpus's median ratio (or its inverse).
LENGTH_RATIO = 5.0
#: The kinds of issue, in the order they are reported.
KINDS = ("placeholder", "empty", "identical", "wrong-script", "duplicate", "length-ratio")
#: Ids named in a warning before "and N more".
SHOWN_IDS = 10

#: ISO 15924 script codes (and the code's first word in Unicode character names).
_SCRIPT_CODES = {
    "Latn": "LATIN",
    "Cyrl": "CYRILLIC",
    "Arab": "ARABIC",
    "Deva": "DEVANAGARI",
    "Grek": "GREEK",
    "Hebr": "HEBREW",
    "Thai": "THAI",
    "Hang": "HANGUL",
    "Kore": "HANGUL",
    "Hans": "HAN",
    "Hant": "HAN",
    "Hani": "HAN",
    "Jpan": "JAPANESE",
    "Beng": "BENGALI",
    "Taml": "TAMIL",
    "Geor": "GEORGIAN",
    "Armn": "ARMENIAN",
    "Ethi": "ETHIOPIC",
}
#: Languages whose script is unambiguous (ISO 639-1 and -3 codes).
_LANG_SCRIPTS = {
    **dict.fromkeys(("zh", "zho", "cmn", "yue", "wuu"), "HAN"),
    **dict.fromkeys(("ja", "jpn"), "JAPANESE"),
    **dict.fromkeys(("ko", "kor"), "HANGUL"),
    **dict.fromkeys(("ru", "rus", "uk", "ukr", "bg", "bul", "be", "bel", "mk", "mkd"), "CYRILLIC"),
    **dict.fromkeys(("ar", "ara", "arb", "fa", "fas", "pes", "ur", "urd"), "ARABIC"),
    **dict.fromkeys(("hi", "hin", "mr", "mar", "ne", "npi", "nep"), "DEVANAGARI"),
    **dict.fromkeys(("el", "ell"), "GREEK"),
    **dict.fromkeys(("he", "heb"), "HEBREW"),
    **dict.fromkeys(("th", "tha"), "THAI"),
    **dict.fromkeys(("bn", "ben"), "BENGALI"),
    **dict.fromkeys(("ta", "tam"), "TAMIL"),
    **dict.fromkeys(("ka", "kat"), "GEORGIAN"),
    **dict.fromkeys(("hy", "hye"), "ARMENIAN"),
    **dict.fromkeys(("am", "amh"), "ETHIOPIC"),
    **dict.fromkeys(
        [
            "en",
            "eng",
            "fr",
            "fra",
            "de",
            "deu",
            "es",
            "spa",
            "it",
            "ita",
            "pt",
            "por",
            "nl",
            "nld",
            "sv",
            "swe",
            "da",
            "dan",
            "no",
            "nob",
            "nn",
            "nno",
            "fi",
            "fin",
            "pl",
            "pol",
            "cs",
            "ces",
            "sk",
            "slk",
            "tr",
            "tur",
            "id",
            "ind",
            "ms",
            "msa",
            "zsm",
            "vi",
            "vie",
            "ro",
            "ron",
            "hu",
            "hun",
            "et",
            "est",
            "lv",
            "lvs",
            "lt",
            "lit",
            "sl",
            "slv",
            "hr",
            "hrv",
            "ca",
            "cat",
            "eu",
            "eus",
            "gl",
            "glg",
            "is",
            "isl",
            "ga",
            "gle",
            "cy",
            "cym",
            "sw",
            "swh",
            "swa",
            "af",
            "afr",
            "tl",
            "tgl",
        ],
        "LATIN",
    ),
}


@dataclass(frozen=True)
class QualityIssue:
    """One kind of problem in one language (or pair of languages), with the rows it concerns."""

    kind: str
    """One of :data:`KINDS`."""
    langs: tuple[str, ...]
    """The language (or languages) concerned."""
    ids: tuple[str, ...]
    """The row ids, in corpus order (``duplicate``: ``id=first id``)."""
    detail: str
    """What was found, in words."""

    @property
    def count(self) -> int:
        return len(self.ids)

    def message(self, source: str | None = None) -> str:
        """One line naming the count, the languages, what was found and the first ids."""
        shown = ", ".join(self.ids[:SHOWN_IDS])
        more = f" and {self.count - SHOWN_IDS} more" if self.count > SHOWN_IDS else ""
        where = f"{source}: " if source else "corpus: "
        return f"{where}{self.count} row(s) {self.detail} (ids {shown}{more})"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "langs": list(self.langs),
            "count": self.count,
            "ids": list(self.ids),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class QualityReport:
    """Every issue :func:`check_corpus` found in a corpus of ``n_rows`` rows."""

    n_rows: int
    issues: tuple[QualityIssue, ...]
    source: str = "<memory>"

    @property
    def flagged_ids(self) -> tuple[str, ...]:
        """Ids of rows with an untranslated side (placeholder, empty, identical, wrong script)."""
        bad = {"placeholder", "empty", "identical", "wrong-script"}
        seen: dict[str, None] = {}
        for issue in self.issues:
            if issue.kind in bad:
                seen.update(dict.fromkeys(issue.ids))
        return tuple(seen)

    def warnings(self) -> list[str]:
        """One line per issue (see :meth:`QualityIssue.message`)."""
        return [issue.message(self.source) for issue in self.issues]

    def to_json(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows,
            "source": self.source,
            "checks": list(KINDS),
            "length_ratio": LENGTH_RATIO,
            "issues": [issue.to_json() for issue in self.issues],
            "untranslated_ids": list(self.flagged_ids),
        }


def is_placeholder(text: str) -> bool:
    """Whether ``text`` is a known placeholder for a missing translation (:data:`PLACEHOLDER`,
    :data:`PLACEHOLDER_EXACT`)."""
    return text.strip() in PLACEHOLDER_EXACT or bool(PLACEHOLDER.match(text.strip().casefold()))


def expected_script(lang: str) -> str | None:
    """The script ``lang`` is written in (``"LATIN"``, ``"HAN"``, ``"JAPANESE"``, ...), or None.

    An ISO 15924 suffix decides (``fra_Latn``, ``zho_Hant``, ``sr-Cyrl``); else the language
    code before any ``_``/``-`` (``zh-CN`` -> ``zh``). Unknown codes (and languages written in
    several scripts, such as Serbian) give None: no script check.
    """
    parts = re.split(r"[_-]", lang)
    for part in parts[1:]:
        if part.title() in _SCRIPT_CODES:  # hi-latn as hi-Latn
            return _SCRIPT_CODES[part.title()]
    return _LANG_SCRIPTS.get(parts[0].lower())


def script_of(ch: str) -> str | None:
    """The script of one letter (the first word of its Unicode name; CJK ideographs ``HAN``)."""
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return None
    if name.startswith("CJK"):
        return "HAN"
    for width in ("HALFWIDTH ", "FULLWIDTH "):  # half-width katakana, full-width Latin
        name = name.removeprefix(width)
    return name.split(" ", 1)[0]


def _in_script(text: str, script: str) -> bool | None:
    """True if a letter of ``text`` is in ``script``; None if the text has no letters."""
    accept = {"HAN", "HIRAGANA", "KATAKANA"} if script == "JAPANESE" else {script}
    letters = False
    for ch in text:
        if ch.isalpha():
            letters = True
            if script_of(ch) in accept:
                return True
    return None if not letters else False


def check_corpus(
    corpus: ParallelCorpus,
    langs: Sequence[str] | None = None,
    *,
    length_ratio: float = LENGTH_RATIO,
) -> QualityReport:
    """Every quality issue of ``corpus`` in ``langs`` (default: all its languages; one is
    enough for the checks of a single side), each with its ids (see the module docs)."""
    langs = list(corpus.languages if langs is None else langs)
    if not langs:
        return QualityReport(len(corpus), (), corpus.source)
    ids = corpus.ids
    texts = {lang: corpus.text(lang) for lang in langs}
    issues: list[QualityIssue] = []
    bad_rows: set[int] = set()
    for lang in langs:
        column = texts[lang]
        found = sorted({column[i].strip() for i in range(len(ids)) if is_placeholder(column[i])})
        rows = [i for i in range(len(ids)) if is_placeholder(column[i])]
        if rows:
            quoted = ", ".join(repr(t) for t in found[:5])
            issues.append(
                QualityIssue(
                    "placeholder", (lang,), tuple(ids[i] for i in rows),
                    f"whose {lang} text is a placeholder ({quoted}), not a translation",
                )
            )  # fmt: skip
            bad_rows.update(rows)
    for lang in langs:
        rows = [i for i, t in enumerate(texts[lang]) if not t.strip()]
        if rows:
            issues.append(
                QualityIssue(
                    "empty", (lang,), tuple(ids[i] for i in rows), f"with empty {lang} text"
                )
            )
            bad_rows.update(rows)
    for a_i, a in enumerate(langs):
        for b in langs[a_i + 1 :]:
            rows = [
                i
                for i in range(len(ids))
                if i not in bad_rows
                and len(texts[a][i].strip()) >= IDENTICAL_MIN_CHARS
                and texts[a][i].strip().casefold() == texts[b][i].strip().casefold()
            ]
            if rows:
                issues.append(
                    QualityIssue(
                        "identical", (a, b), tuple(ids[i] for i in rows),
                        f"whose {a} and {b} texts are identical (left untranslated?)",
                    )
                )  # fmt: skip
    for lang in langs:
        script = expected_script(lang)
        if script is None:
            continue
        rows = [
            i
            for i, t in enumerate(texts[lang])
            if i not in bad_rows and _in_script(t, script) is False
        ]
        if rows:
            issues.append(
                QualityIssue(
                    "wrong-script", (lang,), tuple(ids[i] for i in rows),
                    f"whose {lang} text has no letter in the {script.title()} script",
                )
            )  # fmt: skip
    first: dict[tuple[str, ...], int] = {}
    dups: list[str] = []
    for i in range(len(ids)):
        key = tuple(texts[lang][i] for lang in langs)
        if key in first:
            dups.append(f"{ids[i]}={ids[first[key]]}")
        else:
            first[key] = i
    if dups:
        issues.append(
            QualityIssue(
                "duplicate", tuple(langs), tuple(dups),
                "that repeat an earlier row in every language (id=first id)",
            )
        )  # fmt: skip
    issues += _length_outliers(ids, texts, langs, bad_rows, length_ratio)
    return QualityReport(len(ids), tuple(issues), corpus.source)


def _length_outliers(
    ids: Sequence[str],
    texts: Mapping[str, Sequence[str]],
    langs: Sequence[str],
    skip: set[int],
    factor: float,
) -> list[QualityIssue]:
    """Rows whose length ratio (first language against each other) is off the median by
    more than ``factor`` either way."""
    out = []
    base = langs[0]
    for other in langs[1:]:
        ratios = {
            i: log(len(texts[base][i].strip()) / len(texts[other][i].strip()))
            for i in range(len(ids))
            if i not in skip
            and texts[base][i].strip()
            and texts[other][i].strip()
            and max(len(texts[base][i].strip()), len(texts[other][i].strip())) >= LENGTH_MIN_CHARS
        }
        if len(ratios) < 10:  # too few rows for a median to mean anything
            continue
        median = statistics.median(ratios.values())
        rows = [i for i, r in ratios.items() if abs(r - median) > log(factor)]
        if rows:
            out.append(
                QualityIssue(
                    "length-ratio", (base, other), tuple(ids[i] for i in sorted(rows)),
                    f"whose {base}/{other} length ratio is over {factor:g}x off the corpus median "
                    "(truncated or misaligned?)",
                )
            )  # fmt: skip
    return out
