"""docs/cli.md is generated from the CLI and must not drift from it."""

from __future__ import annotations

from pathlib import Path

from xlalign.cli import cli_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_in_sync():
    assert DOC.read_text(encoding="utf-8") == cli_reference(), (
        "docs/cli.md is stale: run make cli-doc"
    )


def test_every_command_and_option_is_documented():
    text = cli_reference()
    for cmd in ("problems", "extract", "export-npz", "align", "origin", "lens", "run", "demo"):
        assert f"## `xlalign {cmd}`" in text
    for flag in ("--pool", "--resume", "--null", "--stratify", "--config", "--control"):
        assert f"`{flag}" in text or f", {flag}" in text
