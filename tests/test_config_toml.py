"""config.toml round-trips any text: labels and paths outside the Basic Multilingual Plane."""

from __future__ import annotations

from dataclasses import asdict

from hypothesis import given, settings
from hypothesis import strategies as st

from xlalign.pipeline.config import StudyConfig, config_to_toml, load_config_file

# Any text: every Unicode scalar value, control characters included (lone surrogates are not
# text, and no UTF-8 file can hold them).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20)


def _round_trip(cfg: StudyConfig, tmp) -> StudyConfig:
    path = tmp / "config.toml"
    path.write_text(config_to_toml(cfg), encoding="utf-8")
    return StudyConfig(**load_config_file(path))


def test_non_bmp_label_data_and_output_round_trip(tmp_path):
    """The issue's reproduction: an emoji and a CJK Extension B character."""
    cfg = StudyConfig(
        model="m/\U0001f600", data="data/\U00020000.jsonl", output="runs/\U0001f4a9 study",
        label='say "\U0001f600"\\n', langs=("zh", "en"),
    )  # fmt: skip
    assert asdict(_round_trip(cfg, tmp_path)) == asdict(cfg)


@settings(max_examples=100, deadline=None)
@given(label=TEXT, data=TEXT, output=TEXT)
def test_any_text_round_trips(tmp_path_factory, label, data, output):
    cfg = StudyConfig(model="m", data=data, output=output, label=label)
    got = _round_trip(cfg, tmp_path_factory.mktemp("c"))
    assert (got.label, got.data, got.output) == (label, data, output)
