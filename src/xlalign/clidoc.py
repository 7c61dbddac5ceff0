"""The CLI reference as Markdown, generated from the commands themselves (docs/cli.md).

``python -m xlalign.clidoc > docs/cli.md`` regenerates it; a test fails when it drifts.
"""

from __future__ import annotations

from typing import Any


def cli_reference() -> str:
    """Markdown: every subcommand with its arguments, options, defaults and help."""
    import typer

    from xlalign.cli import app

    group: Any = typer.main.get_command(app)
    lines = [
        "# xlalign command-line reference",
        "",
        "Generated from the CLI by `python -m xlalign.clidoc > docs/cli.md`; do not edit.",
        "",
    ]
    for name, cmd in group.commands.items():
        lines += [f"## `xlalign {name}`", "", (cmd.help or "").strip(), ""]
        rows = []
        for p in cmd.params:
            if p.param_type_name == "argument":
                flag = p.name.upper()
            else:
                flag = ", ".join(p.opts + list(p.secondary_opts))
            default = "" if p.required or p.default in (None, "") else f"`{p.default}`"
            need = "required" if p.required else default
            help_text = (getattr(p, "help", None) or "").replace("|", "\\|")
            rows.append(f"| `{flag}` | {need} | {help_text} |")
        if rows:
            lines += ["| option | default | meaning |", "| --- | --- | --- |", *rows, ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(cli_reference(), end="")
