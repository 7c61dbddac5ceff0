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


def test_clean_gloss_gives_none_for_a_sense_opening_with_a_bracketed_qualifier():
    """A sense that opens with ``[...]`` is a qualified sense, like one opening with ``(...)``:
    not a main sense, even though the rest would be one word."""
    assert clean_gloss("[literary] to say") is None
    assert clean_gloss("(classical) to say") is None
    assert clean_gloss("to say [literary]") == "say"


def test_word_pairs_keep_a_word_once_even_when_a_later_gloss_differs():
    """A Chinese word seen again with another gloss is still its first pair only; tokens with
    no gloss give no pair; a level that is not an integer is recorded as None."""
    records = [
        {"hsk_level": 1, "tokens": [{"word": "老师", "gloss_en": "teacher"}]},
        {"hsk_level": 2, "tokens": [{"word": "老师", "gloss_en": "instructor"}]},
        {
            "tokens": [
                {"word": "狗"},
                {"word": "猫", "gloss_en": ""},
                {"word": "水", "gloss_en": "water"},
            ]
        },
        {"hsk_level": "3", "tokens": [{"word": "书", "gloss_en": "book"}]},
    ]
    assert [(p.zh, p.en, p.hsk_level) for p in hsk_word_pairs(records)] == [
        ("老师", "teacher", 1),
        ("水", "water", None),
        ("书", "book", None),
    ]


@needs_hsk
def test_word_pairs_default_to_the_packaged_records():
    assert hsk_word_pairs() == hsk_word_pairs(_raw())


def test_cloze_prompt_blanks_only_the_first_whole_word_occurrence_in_any_case():
    """The query's word is blanked once: the first whole-word match, whatever its case, in the
    English sentence (not inside 'concatenate'), and the first occurrence in the Chinese one."""
    from xlalign.data.corpora import ClozeItem, WordPair, cloze_prompt

    item = ClozeItem(WordPair("天", "cat", 1), "今天天气", "Cat, concatenate a cat.")
    assert cloze_prompt([], item, "en") == 'Sentence: "___, concatenate a cat." Answer: "'
    assert cloze_prompt([], item, "zh") == '句子: "今___天气" 答案: "'


def test_cloze_prompt_demonstrations_show_their_answers_and_the_query_does_not():
    from xlalign.data.corpora import ClozeItem, WordPair, cloze_prompt

    dog = ClozeItem(WordPair("狗", "dog", 1), "我爱我的狗。", "I love my dog.")
    cat = ClozeItem(WordPair("猫", "cat", 1), "猫喝水。", "The cat drinks water.")
    assert cloze_prompt([dog], cat, "en").split("\n") == [
        'Sentence: "I love my ___." Answer: "dog"',
        'Sentence: "The ___ drinks water." Answer: "',
    ]
    assert cloze_prompt([dog], cat, "zh").split("\n") == [
        '句子: "我爱我的___。" 答案: "狗"',
        '句子: "___喝水。" 答案: "',
    ]


def test_cloze_items_take_each_words_first_usable_sentence_and_read_every_token():
    """Tokens that are not word pairs are passed over without ending the record; a word with
    two usable sentences gets the first; records without English or with a placeholder for it
    give no item (even for a word whose gloss is the placeholder itself)."""
    from xlalign.data.corpora import cloze_items

    records = [
        {"chinese": "狗叫。", "translation": {"en": "placeholder"},
         "tokens": [{"word": "狗", "gloss_en": "placeholder"}]},
        {"chinese": "猫叫。", "tokens": [{"word": "猫", "gloss_en": "cat"}]},
        {"chinese": "OK，我爱狗。", "translation": {"en": "OK, I love the dog."},
         "tokens": [{"word": "OK", "gloss_en": "okay"}, {"word": "爱", "gloss_en": "to love"}]},
        {"chinese": "我也爱。", "translation": {"en": "I love it too."},
         "tokens": [{"word": "爱", "gloss_en": "to love"}]},
    ]  # fmt: skip
    got = [(i.word.zh, i.word.en, i.zh_sentence, i.en_sentence) for i in cloze_items(records)]
    assert got == [("爱", "love", "OK，我爱狗。", "OK, I love the dog.")]


@needs_hsk
def test_cloze_items_default_to_the_packaged_records():
    from xlalign.data.corpora import cloze_items

    assert cloze_items() == cloze_items(_raw())


def test_word_tasks_accept_zero_shots_and_one_row_and_refuse_less():
    from xlalign.data.corpora import cloze_words, copy_words

    tok = WordTokenizer({"teacher", "dog", "cat", "water", "book", "thank"})
    for task, records in ((translate_words, RECORDS), (copy_words, RECORDS),
                          (cloze_words, CLOZE_RECORDS)):  # fmt: skip
        one = task(tok, 1, shots=0, records=records)
        assert len(one) == 1 and "\n" not in one.texts["zh"][0]  # the query alone
        with pytest.raises(XlalignError, match=r"^shots must be at least 0, got -1$"):
            task(tok, shots=-1, records=records)
        with pytest.raises(XlalignError, match=r"^--n must be at least 1, got 0$"):
            task(tok, 0, records=records)


class _LocaleResource:
    """A packaged file that, like a machine whose locale is not UTF-8, opens as latin-1 unless
    an encoding is asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def joinpath(self, *parts: str) -> _LocaleResource:
        assert parts == ("data/sentences.json",)
        return self

    def open(self, mode: str = "r", encoding: str | None = None):
        import io

        assert mode == "r"
        return io.TextIOWrapper(io.BytesIO(self.data), encoding=encoding or "latin-1")


def test_hsk_records_read_the_json_as_utf8_whatever_the_locale_and_want_a_list(monkeypatch):
    import importlib.resources

    from xlalign.data import corpora

    data = json.dumps([{"chinese": "你好"}], ensure_ascii=False).encode("utf-8")
    monkeypatch.setattr(importlib.resources, "files", lambda _name: _LocaleResource(data))
    assert corpora.hsk_records() == [{"chinese": "你好"}]
    not_a_list = json.dumps({"chinese": "你好"}, ensure_ascii=False).encode("utf-8")
    monkeypatch.setattr(importlib.resources, "files", lambda _name: _LocaleResource(not_a_list))
    with pytest.raises(
        CorpusError, match=r"^hsk_sentences_audio/data/sentences\.json: expected a list of records$"
    ):
        corpora.hsk_records()


#: HSK records in the package's shape (ids, levels, topics, a placeholder, gaps), written here.
HSK_SMALL = [
    {"id": 1, "hsk_level": 1, "topic": "greet", "chinese": "你好", "translation": {"en": "Hello"}},
    {"id": 2, "hsk_level": 2, "topic": "thanks", "chinese": "谢谢",
     "translation": {"en": "placeholder"}},
    {"id": 3, "hsk_level": 2, "topic": "bye", "chinese": "再见"},  # no English
    {"id": 4, "hsk_level": 3, "topic": "x", "chinese": "", "translation": {"en": "Empty"}},
    {"id": 5, "hsk_level": 3, "chinese": "好", "translation": {"en": "Good"}},  # no topic
    {"id": 6, "hsk_level": 4, "topic": "food", "chinese": "吃", "translation": {"en": "Eat"}},
]  # fmt: skip


def test_hsk_corpus_of_given_records_keeps_the_translated_rows_and_lists_the_placeholders(
    monkeypatch,
):
    from xlalign.data import corpora
    from xlalign.data.corpus import SkippedRow

    monkeypatch.setattr(corpora, "hsk_records", lambda: [dict(r) for r in HSK_SMALL])
    corpus = corpora.hsk()
    assert corpus.ids == ("1", "5", "6")
    assert corpus.texts == {"zh": ("你好", "好", "吃"), "en": ("Hello", "Good", "Eat")}
    assert corpus.meta == {"hsk_level": (1, 3, 4), "topic": ("greet", "None", "food")}
    assert corpus.source == "hsk-sentences-audio 1.0.0 (1 untranslated rows dropped)"
    assert corpus.skipped == (
        SkippedRow(
            "2",
            "hsk_sentences_audio/data/sentences.json",
            "untranslated: the English text is a placeholder ('placeholder')",
        ),
    )
    chosen = corpora.hsk(levels=[4, 1, 4])
    assert chosen.ids == ("1", "6") and chosen.skipped == ()  # the placeholder is level 2
    assert chosen.source == "hsk-sentences-audio 1.0.0 levels 1,4"
    every = corpora.hsk(levels=range(1, 7))
    assert every.ids == corpus.ids
    assert every.source == "hsk-sentences-audio 1.0.0 (1 untranslated rows dropped) levels " + (
        "1,2,3,4,5,6"
    )
    with pytest.raises(CorpusError, match=r"^HSK levels are 1 to 6, got 0, 7$"):
        corpora.hsk(levels=[0, 3, 7])


def test_hsk_sample_sizes_from_one_to_all_rows_with_seed_zero_by_default(monkeypatch):
    from xlalign.data import corpora

    monkeypatch.setattr(corpora, "hsk_records", lambda: [dict(r) for r in HSK_SMALL])
    base = "hsk-sentences-audio 1.0.0 (1 untranslated rows dropped)"
    for n in (1, 2, 3):
        sample = corpora.hsk(n=n, seed=5)
        assert len(sample) == n and set(sample.ids) <= {"1", "5", "6"}
        assert list(sample.ids) == sorted(sample.ids)  # in the corpus order
        assert sample.source == f"{base} (n={n}, seed=5)"
    with pytest.raises(CorpusError, match=r"^n must be at least 1, got 0$"):
        corpora.hsk(n=0)
    with pytest.raises(CorpusError, match=r"^asked for 4 HSK pairs, there are 3$"):
        corpora.hsk(n=4)
    many = [
        {"id": i, "hsk_level": 1, "topic": "t", "chinese": "字", "translation": {"en": "w"}}
        for i in range(30)
    ]
    monkeypatch.setattr(corpora, "hsk_records", lambda: many)
    assert corpora.hsk(n=5).ids == corpora.hsk(n=5, seed=0).ids != corpora.hsk(n=5, seed=1).ids


def test_load_builtin_names_the_hsk_and_problems_corpora_and_refuses_others(monkeypatch):
    from xlalign.data import corpora
    from xlalign.data.problems import generate_problems

    many = [
        {"id": i, "hsk_level": 1 + i % 2, "topic": "t", "chinese": "字", "translation": {"en": "w"}}
        for i in range(30)
    ]
    monkeypatch.setattr(corpora, "hsk_records", lambda: many)
    assert corpora.load_builtin("hsk") == corpora.hsk()
    assert len(corpora.load_builtin("hsk")) == 30
    assert corpora.load_builtin("hsk", n=6) == corpora.hsk(n=6, seed=0)
    assert corpora.load_builtin("hsk", 6, seed=2) == corpora.hsk(n=6, seed=2)
    assert corpora.hsk(n=6, seed=2).ids != corpora.hsk(n=6, seed=0).ids  # the seed matters
    assert corpora.load_builtin("problems") == generate_problems(200, 42)
    assert corpora.load_builtin("problems", 10, seed=7) == generate_problems(10, 42)
    with pytest.raises(CorpusError, match=r"^unknown built-in corpus 'HSK': known hsk, problems$"):
        corpora.load_builtin("HSK")


#: Per word task: row-id prefix, records, the tokenizer's single-token English words, the kept
#: words (Chinese, English, level) in the order of the records, and the source's description.
WORD_TASK_CASES = {
    "translate_words": (
        "w", RECORDS, {"teacher", "dog", "cat", "water", "book", "thank"},
        [("狗", "dog", 2), ("猫", "cat", 2), ("水", "water", 2), ("书", "book", 2)],
        "translate-words (kept 4 of 7 words: single tokens in both languages",
    ),
    "copy_words": (
        "k", RECORDS, {"teacher", "dog", "cat", "water", "book", "thank"},
        [("狗", "dog", 2), ("猫", "cat", 2), ("水", "water", 2), ("书", "book", 2)],
        "copy-words (kept 4 of 7 words: single tokens in both languages",
    ),
    "cloze_words": (
        "c", CLOZE_RECORDS, {"dog", "love", "cat", "water", "book"},
        [("狗", "dog", 1), ("爱", "love", 1), ("猫", "cat", 1), ("水", "water", 1),
         ("书", "book", 2)],
        "cloze-words (kept 5 of 6 words with a sentence pair: single tokens in both languages",
    ),
}  # fmt: skip


@pytest.mark.parametrize("task", sorted(WORD_TASK_CASES))
def test_word_task_rows_are_the_kept_words_each_once_after_other_words_as_demonstrations(task):
    """Row ``<prefix>NNNN`` is kept word NNNN; its ``shots`` demonstrations are distinct other
    kept words, the same ones in both columns; the draw is seeded (0 by default) and ``n``
    keeps a subset of the rows; the source counts words, rows, shots and seed."""
    from xlalign.data import corpora

    prefix, records, single, words, what = WORD_TASK_CASES[task]
    make = getattr(corpora, task)
    tok = WordTokenizer(single)
    corpus = make(tok, seed=3, shots=2, records=records)
    assert corpus.source == f"hsk-sentences-audio 1.0.0 {what}; {len(words)} rows, 2 shots, seed 3)"
    assert sorted(corpus.ids) == [f"{prefix}{k:04d}" for k in range(len(words))]
    zh_of = {en: zh for zh, en, _ in words}
    for i, row_id in enumerate(corpus.ids):
        answer = (corpus.meta["answer_zh"][i], corpus.meta["answer_en"][i])
        assert (*answer, corpus.meta["hsk_level"][i]) == words[int(row_id[1:])]
        zh_lines, en_lines = corpus.texts["zh"][i].split("\n"), corpus.texts["en"][i].split("\n")
        assert len(zh_lines) == len(en_lines) == 3
        demos_zh = [line.split('"')[3] for line in zh_lines[:-1]]
        demos_en = [line.split('"')[3] for line in en_lines[:-1]]
        assert [zh_of[en] for en in demos_en] == demos_zh  # the same demonstrations
        assert len(set(demos_zh)) == 2 and answer[0] not in demos_zh
    assert make(tok, seed=3, shots=2, records=records) == corpus
    default = make(tok, shots=2, records=records)
    assert default == make(tok, seed=0, shots=2, records=records)
    assert default.source.endswith(" shots, seed 0)")
    capped = make(tok, 2, seed=3, shots=2, records=records)
    assert len(capped) == 2 and capped.source.endswith("; 2 rows, 2 shots, seed 3)")
    for i, row_id in enumerate(capped.ids):
        assert capped.meta["answer_zh"][i] == words[int(row_id[1:])][0]


@pytest.mark.parametrize("task", sorted(WORD_TASK_CASES))
def test_word_tasks_need_one_more_single_token_word_than_shots(task):
    """With K kept words, K - 1 shots work (every other word is a demonstration) and K shots
    do not; the message counts demonstrations and query."""
    from xlalign.data import corpora

    _prefix, records, single, words, _what = WORD_TASK_CASES[task]
    make, tok, k = getattr(corpora, task), WordTokenizer(single), len(words)
    corpus = make(tok, shots=k - 1, records=records)
    assert len(corpus) == k
    assert all(len(prompt.split("\n")) == k for prompt in corpus.texts["en"])
    msg = rf"only {k} of \d+ HSK words .* {k + 1} are needed \({k} demonstrations \+ a query\)"
    with pytest.raises(XlalignError, match=msg):
        make(tok, shots=k, records=records)
