"""The Typer application every CLI module adds its commands to."""

import typer

app = typer.Typer(
    name="delineo",
    help="Auto-contouring for radiotherapy: CT in, targets and organs at risk out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
