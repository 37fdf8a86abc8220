"""The command line as a new user meets it: ``delineo --help`` lists every command in the guide's order
with a one-line example, and ``docs/cli.md`` is exactly what ``--help`` says (generated, never hand-edited)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from delineo.cli import app, main
from delineo.cli.guide import GUIDE
from delineo.cli.reference import render

ROOT = Path(__file__).resolve().parents[2]


def _registered() -> list[str]:
    return [c.name for c in typer.main.get_command(app).commands.values()]


def test_every_command_is_in_the_guide_once():
    names = [e.command for e in GUIDE]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(_registered()), "a command was added or removed: give it a line in delineo/cli/guide.py"


def test_help_lists_commands_in_the_guide_order_with_examples(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [m.group(1) for m in re.finditer(r"^│ ([a-z][a-z-]+)\s{2,}", out, re.M)]
    assert listed == [e.command for e in GUIDE]
    for e in GUIDE:
        assert f"$ {e.example}" in out, e.command
    assert out.index("Start here") < out.index("Train on your own contours") < out.index("Benchmarks and research")


def test_command_help_ends_with_its_example(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["contour", "--help"]) == 0
    assert "Example: delineo contour " in capsys.readouterr().out


def test_docs_cli_page_matches_help():
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == render(), "docs/cli.md is out of date with delineo --help: run `make cli-docs` and commit docs/cli.md"


def test_docs_cli_page_names_every_option():
    """Belt and braces for the generator: every option of every command is on the page."""
    page = (ROOT / "docs" / "cli.md").read_text()
    for cmd in typer.main.get_command(app).commands.values():
        assert f"### delineo {cmd.name}" in page
        for p in cmd.params:
            for opt in p.opts if p.param_type_name == "option" else []:
                if opt != "--help":
                    assert f"`{opt}`" in page, (cmd.name, opt)
