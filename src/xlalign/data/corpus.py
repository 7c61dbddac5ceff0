"""Parallel corpora: N aligned rows across two or more languages, loaded from files.

Supported layouts (language codes are whatever the user's columns are called):

- JSONL: one JSON object per line, one string field per language, optional ``id`` and
  metadata fields (``{"id": "7", "category": 2, "zh": "...", "en": "..."}``).
- CSV / TSV with a header row: the same columns.
- A folder of ``<lang>.txt`` files whose line *i* is parallel across files (MEXA / FLORES).

Every problem is reported with the file and the line or column; nothing is dropped silently.
With ``skip_bad=True`` rows with empty text, missing fields, invalid UTF-8 or duplicate ids
are set aside and listed in :attr:`ParallelCorpus.skipped`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.errors import CorpusError, CorpusQualityWarning

#: Column names taken as language codes when the user does not say which columns are languages:
#: ISO 639 codes with an optional script and/or region (``zh``, ``eng``, ``fra_Latn``, ``zh-CN``).
LANG_CODE = re.compile(r"^[a-z]{2,3}([_-][A-Z][a-z]{3})?([_-]([A-Z]{2}|[0-9]{3}))?$")

ID_COLUMN = "id"
TABLE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class SkippedRow:
    """A row left out because ``skip_bad`` was asked for, and why."""

    id: str
    location: str
    reason: str


@dataclass(frozen=True)
class ParallelCorpus:
    """N aligned rows: ``texts[lang][i]`` are translations of each other for every ``lang``.

    ``ids`` are unique strings; ``meta`` holds optional per-row columns such as ``category``.
    """

    ids: tuple[str, ...]
    texts: Mapping[str, tuple[str, ...]]
    meta: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    source: str = "<memory>"
    skipped: tuple[SkippedRow, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.texts) < 2:
            raise CorpusError(
                f"{self.source}: a parallel corpus needs at least two languages, "
                f"got {sorted(self.texts) or 'none'}"
            )
        for name, column in [*self.texts.items(), *self.meta.items()]:
            if len(column) != n:
                raise CorpusError(
                    f"{self.source}: column '{name}' has {len(column)} rows, ids have {n}"
                )
        if len(set(self.ids)) != n:
            seen: set[str] = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise CorpusError(f"{self.source}: duplicate id '{dup}'")

    @property
    def languages(self) -> tuple[str, ...]:
        """Language codes, in column order."""
        return tuple(self.texts)

    def __len__(self) -> int:
        return len(self.ids)

    def text(self, lang: str) -> tuple[str, ...]:
        """Texts of one language, ``(n_rows,)``; a clear error names the languages there are."""
        if lang not in self.texts:
            raise CorpusError(
                f"{self.source}: language '{lang}' not in corpus; it has {', '.join(self.languages)}"
            )
        return self.texts[lang]

    def select(self, langs: Sequence[str]) -> ParallelCorpus:
        """The same rows restricted to ``langs`` (in that order)."""
        missing = [lang for lang in langs if lang not in self.texts]
        if missing:
            raise CorpusError(
                f"{self.source}: language(s) {', '.join(missing)} not in corpus; "
                f"it has {', '.join(self.languages)}"
            )
        return ParallelCorpus(
            self.ids, {lang: self.texts[lang] for lang in langs}, self.meta, self.source,
            self.skipped,
        )  # fmt: skip

    def head(self, n: int) -> ParallelCorpus:
        """The first ``n`` rows (all of them if there are fewer)."""
        return ParallelCorpus(
            self.ids[:n],
            {lang: texts[:n] for lang, texts in self.texts.items()},
            {k: v[:n] for k, v in self.meta.items()},
            source=f"{self.source}[:{n}]",
        )

    def rows(self) -> Iterator[dict[str, Any]]:
        """One dict per row: ``id``, metadata columns, then one field per language."""
        for i, row_id in enumerate(self.ids):
            row: dict[str, Any] = {ID_COLUMN: row_id}
            row.update({k: v[i] for k, v in self.meta.items()})
            row.update({k: v[i] for k, v in self.texts.items()})
            yield row

    def fingerprint(self) -> str:
        """SHA-256 of ids, languages, texts and metadata in order: equal iff the data are equal."""
        h = hashlib.sha256()
        for row in self.rows():
            h.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8"))
            h.update(b"\n")
        h.update(json.dumps(list(self.languages)).encode())
        return h.hexdigest()

    def to_jsonl(self, path: str | Path) -> Path:
        """Write the corpus as JSONL (UTF-8, one object per row); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for row in self.rows():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
        return path


# ---------------------------------------------------------------------------------------------
# loading


def load_corpus(
    path: str | Path,
    langs: Sequence[str] | None = None,
    *,
    skip_bad: bool = False,
    id_column: str = ID_COLUMN,
) -> ParallelCorpus:
    """Load a parallel corpus from a JSONL, CSV or TSV file or a folder of ``<lang>.txt`` files.

    ``langs`` names the language columns to keep; when omitted, every column whose name looks
    like a language code (:data:`LANG_CODE`) is a language and the rest is metadata.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    if path.is_dir():
        return _load_txt_folder(path, langs, skip_bad)
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise CorpusError(
            f"{path}: unknown file type '{path.suffix or '(none)'}'; expected one of "
            f"{', '.join(sorted(TABLE_SUFFIXES))} or a folder of <lang>.txt files"
        )
    lines = _read_lines(path, skip_bad, keep_ends=kind != "jsonl")
    builder = _Builder(path, langs, skip_bad, id_column)
    if kind == "jsonl":
        _parse_jsonl(path, lines, builder)
    else:
        _parse_table(path, lines, "\t" if kind == "tsv" else ",", builder)
    return builder.build()


#: A line ends at CRLF, LF or a lone CR (old Mac files), as in Python's universal newlines.
_LINE_END = re.compile(rb"\r\n|\r|\n")


def _read_lines(
    path: Path, skip_bad: bool, keep_ends: bool = False
) -> list[tuple[int, str | None]]:
    """``(line_number, text)`` for every line; ``text`` is None for a skipped undecodable line.

    Lines end at ``\r\n``, ``\n`` or a lone ``\r``; ``keep_ends`` keeps each line's ending
    (the CSV reader needs it to keep a quoted field's own line breaks).
    """
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    parts: list[bytes] = []
    start = 0
    for m in _LINE_END.finditer(raw):
        parts.append(raw[start : m.end() if keep_ends else m.start()])
        start = m.end()
    if start < len(raw):
        parts.append(raw[start:])
    out: list[tuple[int, str | None]] = []
    for lineno, chunk in enumerate(parts, start=1):
        try:
            out.append((lineno, chunk.decode("utf-8")))
        except UnicodeDecodeError as e:
            if not skip_bad:
                raise CorpusError(
                    f"{path}:{lineno}: invalid UTF-8 at byte offset {e.start} of the line "
                    f"({chunk[e.start : e.start + 4]!r}); re-encode the file as UTF-8"
                ) from None
            out.append((lineno, None))
    return out


class _Builder:
    """Collects rows, checks each one, and applies the skip policy."""

    def __init__(
        self, path: Path, langs: Sequence[str] | None, skip_bad: bool, id_column: str
    ) -> None:
        self.path, self.skip_bad, self.id_column = path, skip_bad, id_column
        self.langs = list(langs) if langs is not None else None
        self.rows: list[tuple[str, dict[str, Any]]] = []
        self.skipped: list[SkippedRow] = []
        self.columns: dict[str, None] = {}
        self.seen_ids: dict[str, int] = {}
        self.n_data_rows = 0

    def fail(self, row_id: str, lineno: int, reason: str) -> None:
        if not self.skip_bad:
            raise CorpusError(f"{self.path}:{lineno}: {reason}")
        self.skipped.append(SkippedRow(row_id, f"{self.path}:{lineno}", reason))

    def add(
        self,
        lineno: int,
        record: dict[str, Any] | None,
        reason: str | None = None,
        row_id: str | None = None,
    ) -> None:
        index = self.n_data_rows
        self.n_data_rows += 1
        if record is None:  # the skip list names the row by its own id when it can be read
            self.fail(row_id if row_id else str(index), lineno, reason or "unreadable row")
            return
        bad = _invalid_value(record)
        if bad is not None:
            self.fail(str(record.get(self.id_column, index)), lineno, bad)
            return
        for key in record:
            self.columns.setdefault(key, None)
        raw_id = record.get(self.id_column, index)
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            self.fail(str(index), lineno, f"field '{self.id_column}' must be a string or integer")
            return
        row_id = str(raw_id)
        if row_id in self.seen_ids:
            self.fail(
                row_id, lineno, f"duplicate id '{row_id}' (first on line {self.seen_ids[row_id]})"
            )
            return
        self.seen_ids[row_id] = lineno
        self.rows.append((row_id, {"__line__": lineno, **record}))

    def build(self) -> ParallelCorpus:
        columns = [c for c in self.columns if c != self.id_column]
        if self.langs is None:
            # a column named like a code but not holding text (numbers, lists) is metadata
            langs = [
                c
                for c in columns
                if LANG_CODE.match(c)
                and all(isinstance(rec.get(c), str) for _, rec in self.rows if c in rec)
            ]
            if len(langs) > 2:
                import warnings

                warnings.warn(
                    CorpusQualityWarning(
                        f"{self.path}: taking {len(langs)} columns as languages because their "
                        f"names look like language codes ({', '.join(langs)}); pass --langs to "
                        "choose them (the other columns are metadata)"
                    ),
                    stacklevel=3,
                )
            if len(langs) < 2:
                raise CorpusError(
                    f"{self.path}: found {len(langs)} language column(s) among "
                    f"{', '.join(columns) or 'no columns'}; name them with --langs (e.g. --langs zh,en)"
                )
        else:
            langs = self.langs
            missing = [lang for lang in langs if lang not in self.columns]
            if missing:
                raise CorpusError(
                    f"{self.path}: missing language column(s) {', '.join(repr(m) for m in missing)}; "
                    f"the file has columns {', '.join(columns) or '(none)'}"
                )
        meta_cols = [c for c in columns if c not in langs]
        kept: list[tuple[str, dict[str, Any]]] = []
        for row_id, record in self.rows:
            problem = _text_problem(record, langs)
            if problem is not None:
                self.fail(row_id, record["__line__"], problem)
                continue
            kept.append((row_id, record))
        return ParallelCorpus(
            ids=tuple(r for r, _ in kept),
            texts={lang: tuple(rec[lang] for _, rec in kept) for lang in langs},
            meta={c: tuple(rec.get(c) for _, rec in kept) for c in meta_cols},
            source=str(self.path),
            skipped=tuple(self.skipped),
        )


def _invalid_value(record: Mapping[str, Any]) -> str | None:
    """Why a field cannot be stored (a lone surrogate, NaN or infinity), or None."""

    def walk(value: Any, where: str) -> str | None:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                return (
                    f"field '{where}' holds a lone surrogate ({value[e.start]!r} at character "
                    f"{e.start}), which is not text; fix the escape in the file"
                )
        elif isinstance(value, float) and not np.isfinite(value):
            return f"field '{where}' is {value}, which JSON cannot store; use null"
        elif isinstance(value, dict):
            for k, v in value.items():
                found = walk(k, where) or walk(v, f"{where}.{k}")
                if found:
                    return found
        elif isinstance(value, list):
            for v in value:
                found = walk(v, where)
                if found:
                    return found
        return None

    for key, value in record.items():
        found = walk(key, str(key)) or walk(value, str(key))
        if found:
            return found
    return None


def _text_problem(record: Mapping[str, Any], langs: Sequence[str]) -> str | None:
    for lang in langs:
        if lang not in record:
            return f"row has no '{lang}' field"
        value = record[lang]
        if not isinstance(value, str):
            return f"field '{lang}' must be a string, got {type(value).__name__}"
        if not value.strip():
            return f"empty or whitespace-only text in column '{lang}'"
    return None


def _parse_jsonl(path: Path, lines: list[tuple[int, str | None]], builder: _Builder) -> None:
    for lineno, text in lines:
        if text is None:
            builder.add(lineno, None, "invalid UTF-8")
            continue
        if not text.strip():
            continue  # blank lines separate nothing in JSONL; they are not rows
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            builder.add(lineno, None, f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(record, dict):
            builder.add(lineno, None, f"expected a JSON object, got {type(record).__name__}")
            continue
        builder.add(lineno, record)


def _parse_table(
    path: Path, lines: list[tuple[int, str | None]], delimiter: str, builder: _Builder
) -> None:
    """Rows of a CSV/TSV file; a quoted field may span lines (RFC 4180), rows keep their line."""
    bad_lines = {lineno for lineno, text in lines if text is None}

    def feed() -> Iterator[str]:
        for _, text in lines:
            yield "\n" if text is None else text  # an undecodable line reads as an empty row

    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    first = 1
    header: list[str] | None = None
    id_index: int | None = None
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise CorpusError(f"{path}:{first}: malformed row ({e})") from None
        lineno, first = first, reader.line_num + 1
        if header is None:
            if not values or not "".join(values).strip():
                raise CorpusError(f"{path}:1: expected a header row naming the columns")
            header = [h.strip() for h in values]
            if len(set(header)) != len(header):
                dup = sorted({h for h in header if header.count(h) > 1})
                raise CorpusError(f"{path}:1: duplicate column name(s) {', '.join(dup)}")
            for name in header:
                builder.columns.setdefault(name, None)
            id_index = header.index(builder.id_column) if builder.id_column in header else None
            continue
        if lineno in bad_lines:
            builder.add(lineno, None, "invalid UTF-8")
            continue
        if not values or not "".join(values).strip():
            builder.add(lineno, None, "blank line")
            continue
        if len(values) != len(header):
            row_id = values[id_index] if id_index is not None and id_index < len(values) else None
            builder.add(
                lineno, None, f"expected {len(header)} fields (header), found {len(values)}",
                row_id=row_id,
            )  # fmt: skip
            continue
        builder.add(lineno, dict(zip(header, values, strict=True)))
    if header is None:
        raise CorpusError(f"{path}:1: expected a header row naming the columns")


def _load_txt_folder(folder: Path, langs: Sequence[str] | None, skip_bad: bool) -> ParallelCorpus:
    available = {p.stem: p for p in sorted(folder.glob("*.txt"))}
    if langs is None:
        langs = list(available)
    missing = [lang for lang in langs if lang not in available]
    if missing:
        raise CorpusError(
            f"{folder}: missing language file(s) {', '.join(f'{m}.txt' for m in missing)}; "
            f"the folder has {', '.join(f'{s}.txt' for s in available) or 'no .txt files'}"
        )
    if len(langs) < 2:
        raise CorpusError(
            f"{folder}: a parallel corpus needs at least two <lang>.txt files, "
            f"found {', '.join(f'{s}.txt' for s in available) or 'none'}"
        )
    per_lang = {lang: _read_lines(available[lang], skip_bad) for lang in langs}
    counts = {lang: len(v) for lang, v in per_lang.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{available[lang]}: {c} lines" for lang, c in counts.items())
        raise CorpusError(f"{folder}: unequal line counts across language files ({listing})")
    n = next(iter(counts.values()))
    ids: list[str] = []
    texts: dict[str, list[str]] = {lang: [] for lang in langs}
    skipped: list[SkippedRow] = []
    for i in range(n):
        problem = None
        for lang in langs:
            lineno, text = per_lang[lang][i]
            if text is None:
                problem = (available[lang], lineno, "invalid UTF-8")
            elif not text.strip():
                problem = (available[lang], lineno, "empty or whitespace-only line")
            if problem:
                break
        if problem:
            file, lineno, reason = problem
            if not skip_bad:
                raise CorpusError(f"{file}:{lineno}: {reason}")
            skipped.append(SkippedRow(str(i), f"{file}:{lineno}", reason))
            continue
        ids.append(str(i))
        for lang in langs:
            texts[lang].append(per_lang[lang][i][1] or "")
    return ParallelCorpus(
        tuple(ids), {k: tuple(v) for k, v in texts.items()}, {}, str(folder), tuple(skipped)
    )


def load_hf_dataset(
    name: str, split: str, langs: Sequence[str], config: str | None = None
) -> ParallelCorpus:
    """Load a Hugging Face ``datasets`` table with one column per language (optional extra)."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise CorpusError(
            "loading from the Hugging Face hub needs the 'datasets' extra: "
            "pip install 'xlalign[datasets]'"
        ) from None
    ds = datasets.load_dataset(name, config, split=split)
    builder = _Builder(Path(f"hf:{name}/{split}"), langs, False, ID_COLUMN)
    for i, record in enumerate(ds, start=1):
        builder.add(i, dict(record))
    return builder.build()
