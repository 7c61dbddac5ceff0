"""Built-in corpora: the HSK sentences, --data hsk, and the word-translation prompts of the lens."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from importlib.resources import files

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlalign.cli import main
from xlalign.data.corpora import clean_gloss, hsk_records, hsk_word_pairs, translate_words
from xlalign.data.corpus import load_corpus
from xlalign.errors import CorpusError, XlalignError

needs_hsk = pytest.mark.skipif(
    importlib.util.find_spec("hsk_sentences_audio") is None,
    reason="hsk-sentences-audio is not installed (pip install 'xlalign[hsk]')",
)


def _raw() -> list[dict]:
    path = files("hsk_sentences_audio").joinpath("data/sentences.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _untranslated(record: dict) -> bool:
    """The package's stand-ins for a missing English translation, as seen in its data:
    'placeholder' (65), 'placeholder-p1' ... 'placeholder-p14', 'placeholder-q1' and 'PH' (2)."""
    en = record["translation"]["en"].strip().lower()
    return en == "ph" or en.startswith("placeholder")


def _translated() -> list[dict]:
    return [r for r in _raw() if not _untranslated(r)]


@needs_hsk
def test_hsk_records_are_the_packaged_json():
    from xlalign.data.corpora import hsk_records

    records = hsk_records()
    assert records == _raw()
    assert len(records) == 4354
    assert {"word", "gloss_en"} <= set(records[0]["tokens"][0])


@needs_hsk
def test_hsk_corpus_pairs_chinese_with_english_and_keeps_metadata():
    from xlalign.data.corpora import hsk

    raw = {r["id"]: r for r in _translated()}
    corpus = hsk()
    assert corpus.languages == ("zh", "en") and len(corpus) == len(raw) == 4272
    # the 82 untranslated rows are dropped, listed with their ids, and counted in the source
    dropped = [r["id"] for r in _raw() if _untranslated(r)]
    assert len(dropped) == 82 and [s.id for s in corpus.skipped] == dropped
    assert not set(dropped) & set(corpus.ids)
    assert "82 untranslated rows dropped" in corpus.source
    assert all("placeholder" in s.reason for s in corpus.skipped)
    for i in (0, 1000, len(corpus) - 1):
        r = raw[corpus.ids[i]]
        assert corpus.texts["zh"][i] == r["chinese"]
        assert corpus.texts["en"][i] == r["translation"]["en"]
        assert corpus.meta["hsk_level"][i] == r["hsk_level"]
        assert corpus.meta["topic"][i] == r["topic"]


@needs_hsk
def test_hsk_sample_is_stratified_by_level_and_seeded():
    from xlalign.data.corpora import hsk

    full = Counter(r["hsk_level"] for r in _translated())
    sample = hsk(n=500, seed=3)
    assert len(sample) == 500 and len(set(sample.ids)) == 500
    got = Counter(sample.meta["hsk_level"])
    for level, count in full.items():  # each level's share, to within one row
        assert abs(got[level] - 500 * count / sum(full.values())) < 1
    assert hsk(n=500, seed=3).ids == sample.ids
    assert hsk(n=500, seed=4).ids != sample.ids
    two = hsk(levels=[1, 2])
    assert set(two.meta["hsk_level"]) == {1, 2} and len(two) == full[1] + full[2]


@needs_hsk
def test_hsk_bad_arguments_are_clear():
    from xlalign.data.corpora import hsk

    with pytest.raises(CorpusError, match="HSK levels are 1 to 6, got 7"):
        hsk(levels=[7])
    with pytest.raises(CorpusError, match="asked for 5000 HSK pairs, there are 4272"):
        hsk(n=5000)


def test_missing_hsk_package_names_the_pip_install(monkeypatch):
    import importlib.resources

    from xlalign.data import corpora

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(XlalignError, match=r"pip install 'xlalign\[hsk\]'"):
        corpora.hsk_records()


def test_problems_are_re_exported():
    from xlalign.data import corpora, problems

    assert corpora.generate_problems is problems.generate_problems


@needs_hsk
def test_data_hsk_in_a_study_config_with_stratify(tiny_models, tmp_path):
    """--data hsk --data-n N with --stratify hsk_level runs the sweep's stratified null."""
    from xlalign.pipeline.config import StudyConfig
    from xlalign.pipeline.study import run_study

    cfg = StudyConfig(
        model=str(tiny_models["qwen2"]), data="hsk", data_n=60, output=str(tmp_path / "s"),
        sites="embed,L0", device="cpu", control="none", stratify="hsk_level", n_boot=0,
        report=False,
    )  # fmt: skip
    result = run_study(cfg, progress=False, say=lambda _m: None)
    run = result["run"]
    assert run.n_rows == 60 and set(run.meta["hsk_level"]) == set(range(1, 7))
    prov = json.loads((tmp_path / "s" / "provenance.json").read_text())
    assert prov["corpus"]["licence"]["licence"].startswith("CC-BY-SA-4.0")
    assert "hsk-sentences-audio contributors" in prov["corpus"]["licence"]["attribution"]
    assert any("CC-BY-SA-4.0" in line for line in result["summary"])
    align = json.loads((tmp_path / "s" / "alignment.json").read_text())
    assert "hsk_level" in json.dumps(align)


#: Records in the package's shape, written here (not taken from the code under test).
RECORDS = [
    {
        "hsk_level": 1,
        "tokens": [
            {"word": "老师", "gloss_en": "teacher"},
            {"word": "谢谢", "gloss_en": "to thank; thanks"},
            {"word": "坐", "gloss_en": "surname Zuo; to sit"},
            {"word": "跑", "gloss_en": "(of an animal) to paw (the ground); to run"},
            {"word": "对不起", "gloss_en": "I'm sorry; excuse me"},
        ],
    },
    {
        "hsk_level": 2,
        "tokens": [
            {"word": "老师", "gloss_en": "teacher"},  # a repeat: kept once
            {"word": "教师", "gloss_en": "teacher"},  # same English: skipped
            {"word": "狗", "gloss_en": "dog"},
            {"word": "猫", "gloss_en": "cat"},
            {"word": "水", "gloss_en": "water"},
            {"word": "OK", "gloss_en": "okay"},  # not Chinese
            {"word": "书", "gloss_en": "book; letter"},
        ],
    },
]


@pytest.mark.parametrize(
    ("gloss", "word"),
    [
        ("teacher", "teacher"),
        ("to thank; thanks", "thank"),
        ("surname Zuo; to sit", "sit"),
        ("(of an animal) to paw (the ground); to run", None),
        ("I'm sorry; excuse me", None),
        ("name (of a person or thing)", "name"),
        ("used in 傢伙|家伙[jia1 huo5]", None),
    ],
)
def test_clean_gloss_keeps_the_main_one_word_sense(gloss, word):
    assert clean_gloss(gloss) == word


def test_word_pairs_are_unique_in_both_languages():
    pairs = hsk_word_pairs(RECORDS)
    assert [(p.zh, p.en, p.hsk_level) for p in pairs] == [
        ("老师", "teacher", 1),
        ("谢谢", "thank", 1),
        ("坐", "sit", 1),
        ("狗", "dog", 2),
        ("猫", "cat", 2),
        ("水", "water", 2),
        ("书", "book", 2),
    ]


class WordTokenizer:
    """Splits on characters for CJK and keeps listed English words whole (one id each)."""

    def __init__(self, single: set[str]) -> None:
        self.single = single

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        assert add_special_tokens is False
        if text in self.single:
            return {"input_ids": [hash(text) % 1000]}
        return {"input_ids": [ord(c) for c in text]}


def test_translate_words_builds_wendler_prompts_with_single_token_answers():
    tok = WordTokenizer({"teacher", "dog", "cat", "water", "book", "thank"})
    corpus = translate_words(tok, seed=3, shots=2, records=RECORDS)
    # single-character Chinese words with a single-token English word: 狗 猫 水 书
    assert sorted(corpus.meta["answer_zh"]) == ["书", "水", "狗", "猫"]
    assert "kept 4 of 7 words" in corpus.source
    for i in range(len(corpus)):
        zh_prompt, en_prompt = corpus.texts["zh"][i], corpus.texts["en"][i]
        ans_zh, ans_en = corpus.meta["answer_zh"][i], corpus.meta["answer_en"][i]
        zh_lines, en_lines = zh_prompt.split("\n"), en_prompt.split("\n")
        assert len(zh_lines) == len(en_lines) == 3
        assert zh_lines[-1] == f'English: "{ans_en}" - 中文: "'
        assert en_lines[-1] == f'中文: "{ans_zh}" - English: "'
        for demo_zh, demo_en in zip(zh_lines[:-1], en_lines[:-1], strict=True):
            # the same demonstration pair, written in each direction, never the query itself
            en_word, zh_word = demo_zh.split('"')[1], demo_zh.split('"')[3]
            assert demo_en == f'中文: "{zh_word}" - English: "{en_word}"'
            assert zh_word != ans_zh
    again = translate_words(tok, seed=3, shots=2, records=RECORDS)
    assert again.texts == corpus.texts
    assert len(translate_words(tok, 2, seed=3, shots=2, records=RECORDS)) == 2


def test_translate_words_says_when_too_few_words_are_single_tokens():
    with pytest.raises(XlalignError, match=r"only 0 of 7 HSK words are single tokens"):
        translate_words(WordTokenizer(set()), records=RECORDS)


@needs_hsk
def test_real_hsk_data_and_the_problems_cli(minilm_path, tmp_path, capsys):
    """The real package's records, through the CLI, with a real tokenizer (all-MiniLM-L6-v2)."""
    from transformers import AutoTokenizer

    records = hsk_records()
    assert len(records) == 4354 and {"chinese", "tokens", "hsk_level"} <= set(records[0])
    out = tmp_path / "words.jsonl"
    code = main(
        ["problems", "--task", "translate-words", "--model", str(minilm_path), "--n", "30",
         "-o", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    corpus = load_corpus(out)
    assert len(corpus) == 30 and corpus.languages == ("zh", "en")
    assert {"answer_zh", "answer_en", "hsk_level"} <= set(corpus.meta)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    for zh, en in zip(corpus.meta["answer_zh"], corpus.meta["answer_en"], strict=True):
        assert len(tok(zh, add_special_tokens=False)["input_ids"]) == 1
        assert len(tok(en, add_special_tokens=False)["input_ids"]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["zh"].endswith('中文: "') and rows[0]["en"].endswith('English: "')
    assert "kept" in printed.out and "words: single tokens in both languages" in printed.out


def test_problems_cli_translate_words_needs_a_model(capsys):
    assert main(["problems", "--task", "translate-words"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["problems", "--task", "poems"]) == 2
    assert "--task must be arithmetic or one of translate-words, cloze-words, copy-words" in (
        capsys.readouterr().err
    )


#: Sentence pairs in the package's shape for the cloze task, written here.
CLOZE_RECORDS = [
    {"hsk_level": 1, "chinese": "我爱我的狗。", "translation": {"en": "I love my dog."},
     "tokens": [{"word": "狗", "gloss_en": "dog"}, {"word": "爱", "gloss_en": "to love"}]},
    {"hsk_level": 1, "chinese": "猫喝水。", "translation": {"en": "The cat drinks water."},
     "tokens": [{"word": "猫", "gloss_en": "cat"}, {"word": "水", "gloss_en": "water"}]},
    {"hsk_level": 2, "chinese": "这本书很好。", "translation": {"en": "This book is good."},
     "tokens": [{"word": "书", "gloss_en": "book; letter"}]},
    {"hsk_level": 2, "chinese": "老师老师。", "translation": {"en": "placeholder"},
     "tokens": [{"word": "老师", "gloss_en": "teacher"}]},  # untranslated, and twice: no item
    {"hsk_level": 2, "chinese": "今天很好。", "translation": {"en": "Today is a good day."},
     "tokens": [{"word": "今天", "gloss_en": "today"}]},
    {"hsk_level": 3, "chinese": "今天天气很好。", "translation": {"en": "The day is fine."},
     "tokens": [{"word": "今天", "gloss_en": "today"}, {"word": "天气", "gloss_en": "weather"},
                {"word": "天", "gloss_en": "day"}]},
    # 天 twice in that sentence (inside 今天 and 天气): no item, never blanked inside a word
]  # fmt: skip


def test_cloze_words_keep_each_prompt_in_one_language():
    """Wendler et al.'s cloze: the other language's word is never in the prompt (so its
    probability is latent, not a copy); demonstrations are other words' sentences."""
    from xlalign.data.corpora import BLANK, cloze_items, cloze_words

    items = cloze_items(CLOZE_RECORDS)
    assert [(i.word.zh, i.word.en) for i in items] == [
        ("狗", "dog"), ("爱", "love"), ("猫", "cat"), ("水", "water"), ("书", "book"),
        ("今天", "today"),
    ]  # fmt: skip
    tok = WordTokenizer({"dog", "love", "cat", "water", "book"})
    corpus = cloze_words(tok, seed=1, shots=2, records=CLOZE_RECORDS)
    assert len(corpus) == 5 and "kept 5 of 6 words" in corpus.source
    for i in range(len(corpus)):
        zh, en = corpus.texts["zh"][i], corpus.texts["en"][i]
        a_zh, a_en = corpus.meta["answer_zh"][i], corpus.meta["answer_en"][i]
        assert not any(c.isascii() and c.isalpha() for c in zh)  # no English in the zh prompt
        assert a_en not in zh and a_zh not in en
        assert zh.endswith('答案: "') and en.endswith('Answer: "')
        assert zh.count(BLANK) == en.count(BLANK) == 3  # 2 demonstrations and the query
        query_zh = zh.splitlines()[-1]
        assert a_zh not in query_zh  # blanked out
    (row,) = [i for i in range(5) if corpus.meta["answer_en"][i] == "love"]
    assert corpus.texts["en"][row].splitlines()[-1] == 'Sentence: "I ___ my dog." Answer: "'


def test_copy_words_repeat_the_word_in_its_own_language():
    from xlalign.data.corpora import copy_words

    tok = WordTokenizer({"teacher", "dog", "cat", "water", "book", "thank"})
    corpus = copy_words(tok, seed=3, shots=2, records=RECORDS)
    for i in range(len(corpus)):
        zh, en = corpus.texts["zh"][i], corpus.texts["en"][i]
        assert zh.splitlines()[-1] == f'中文: "{corpus.meta["answer_zh"][i]}" - 中文: "'
        assert en.splitlines()[-1] == f'English: "{corpus.meta["answer_en"][i]}" - English: "'
        for line in zh.splitlines()[:-1]:
            left, right = line.split(" - ")
            assert left.split(": ")[1] == right.split(": ")[1]


def _largest_remainder(sizes: dict[int, int], n: int) -> list[dict[int, int]]:
    """Every allocation of ``n`` rows to levels by the largest-remainder (Hamilton) rule: each
    level gets the floor of its quota ``n * size / total``, and the rows left over go one
    each to the levels of largest remainder (every choice among tied remainders listed)."""
    from itertools import combinations

    total = sum(sizes.values())
    floor = {lv: n * s // total for lv, s in sizes.items()}
    rem = {lv: n * s % total for lv, s in sizes.items()}  # exact: remainder times total
    left = n - sum(floor.values())
    out = []
    for extra in combinations(sorted(sizes), left):
        if left and min(rem[lv] for lv in extra) < max(
            (rem[lv] for lv in sizes if lv not in extra), default=-1
        ):
            continue
        out.append({lv: floor[lv] + (lv in extra) for lv in sizes})
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=40),
    st.integers(1, 40),
    st.integers(0, 3),
)
def test_stratified_sample_gives_each_level_its_largest_remainder_share(levels, n, seed):
    from xlalign.data.corpora import _stratified_sample

    n = min(n, len(levels))
    records = [{"id": i, "hsk_level": lv} for i, lv in enumerate(levels)]
    got = _stratified_sample(records, n, seed)
    ids = [r["id"] for r in got]
    assert len(ids) == n and ids == sorted(set(ids))  # without replacement, in corpus order
    counts = Counter(r["hsk_level"] for r in got)
    allowed = _largest_remainder(Counter(levels), n)
    assert allowed and {lv: counts[lv] for lv in set(levels)} in allowed
    assert _stratified_sample(records, n, seed) == got  # seeded


def test_stratified_sample_remainders_go_to_the_largest_fractions():
    """Levels of 5, 3 and 2 records, 5 drawn: quotas 2.5, 1.5, 1.0; floors 2, 1, 1 leave one
    row, which goes to level 1 or 2 (remainder 0.5), never to level 3 (remainder 0)."""
    from xlalign.data.corpora import _stratified_sample

    records = [{"id": i, "hsk_level": lv} for i, lv in enumerate([1] * 5 + [2] * 3 + [3] * 2)]
    for seed in range(5):
        counts = Counter(r["hsk_level"] for r in _stratified_sample(records, 5, seed))
        assert (counts[1], counts[2], counts[3]) in ((3, 1, 1), (2, 2, 1)), counts
