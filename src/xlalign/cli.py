"""The ``xlalign`` command line: each subcommand parses flags and calls one library function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from xlalign.errors import XlalignError

app = typer.Typer(
    name="xlalign",
    help="Measure how a transformer's hidden states line up across languages, layer by layer.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Measure how a transformer's hidden states line up across languages, layer by layer."""


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command("problems")
def problems_cmd(
    n: Annotated[int, typer.Option("--n", help="Number of problems (n // 5 per category).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of random.Random, as in the study.")] = 42,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="JSONL file to write (id, category, zh, en).")
    ] = Path("problems.jsonl"),
) -> None:
    """Write the study's parallel zh/en problem set as JSONL."""
    from xlalign.problems import generate_problems

    if n < 5:
        raise XlalignError(f"--n must be at least 5 (one problem per category), got {n}")
    corpus = generate_problems(n, seed)
    corpus.to_jsonl(output)
    print(f"wrote {len(corpus)} problems ({', '.join(corpus.languages)}) to {output}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 a user error, 1 anything else)."""
    try:
        app(args=argv, prog_name="xlalign")
    except SystemExit as e:  # typer exits on --help and on usage errors (already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except XlalignError as e:
        print(f"xlalign: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xlalign: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
