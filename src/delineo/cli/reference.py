"""``docs/cli.md``, generated from the command line itself: ``python -m delineo.cli.reference > docs/cli.md``
(``make cli-docs``). ``tests/cli/test_docs_cli.py`` fails when the committed page differs from what this
writes, so the page cannot drift from ``--help``."""

from __future__ import annotations

import inspect
import sys

import click
import typer

from delineo.cli import app
from delineo.cli.guide import GUIDE

HEADER = """\
# Command line

`delineo --help` lists the commands in this order, each with a one-line example;
`delineo COMMAND --help` gives every option. This page is generated from the same definitions
(`make cli-docs`; a test fails when it is out of date), so it lists exactly what `--help` does.

Every command that runs for long (`train`, `evaluate`, `noise-benchmark`, `ablation`, `audit`,
`import-dicom`, `stress`) shows a progress bar on a terminal and writes one line per step
(epoch, case, run or study) when its output goes to a log file. Errors in the input are one
line naming the file and the problem (`delineo: error: ...`, exit code 2).
"""


def _default(param) -> str:
    if param.required:
        return "required"
    value = param.default
    if callable(value) or value is None or value == () or value == []:
        return ""
    if getattr(param, "is_flag", False):
        if getattr(param, "secondary_opts", None):
            return (param.opts if value else param.secondary_opts)[0]
        return "" if value is False else "on"
    return f"`{value}`"


def _names(param) -> str:
    if param.param_type_name == "argument":
        return f"`{(param.metavar or param.name).upper()}`"
    opts = list(param.opts) + list(getattr(param, "secondary_opts", []) or [])
    return ", ".join(f"`{o}`" for o in opts)


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def render() -> str:
    """The whole of ``docs/cli.md``."""
    group = typer.main.get_command(app)
    ctx = click.Context(group, info_name="delineo")
    lines = [HEADER]
    panels: dict[str, list] = {}
    for entry in GUIDE:
        panels.setdefault(entry.panel, []).append(entry)
    lines.append("| command | what it does | example |\n|---|---|---|")
    for entry in GUIDE:
        anchor = "delineo-" + entry.command
        lines.append(f"| [`{entry.command}`](#{anchor}) | {_cell(entry.summary)} | `{entry.example}` |")
    lines.append("")
    for panel, entries in panels.items():
        lines.append(f"## {panel}\n")
        for entry in entries:
            cmd = group.commands[entry.command]
            sub = click.Context(cmd, info_name=entry.command, parent=ctx)
            usage = " ".join(cmd.collect_usage_pieces(sub))
            lines.append(f"### delineo {entry.command}\n")
            lines.append(inspect.cleandoc(cmd.help or "").replace("``", "`") + "\n")
            lines.append(f"```\ndelineo {entry.command} {usage}\n```\n")
            lines.append(f"Example:\n\n```\n{entry.example}\n```\n")
            params = [p for p in cmd.params if p.name != "help"]
            if params:
                lines.append("| argument or option | default | meaning |\n|---|---|---|")
                for p in params:
                    lines.append(f"| {_names(p)} | {_cell(_default(p))} | {_cell(getattr(p, 'help', '') or '')} |")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render())
