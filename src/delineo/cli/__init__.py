"""``delineo`` command line: a thin shell over :mod:`delineo.api`.

Sub-commands register themselves on :data:`app` from the modules of this package.
"""

from __future__ import annotations

import sys

from delineo.cli.app import app
from delineo.cli import engine  # noqa: F401  (registers train, evaluate, contour, models, demo)
from delineo.cli import contours  # noqa: F401  (registers margin, boolean, ring, remove-islands)
from delineo.cli import noise  # noqa: F401  (registers noise-benchmark, audit, ablation)
from delineo.cli import service  # noqa: F401  (registers serve, worker, stress)
from delineo.cli import dicom  # noqa: F401  (registers dicom-node, import-dicom)
from delineo.cli import guide
from delineo.errors import DelineoError

guide.apply(app)  # the order a new user needs the commands in, each with a one-line example


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors are printed as one line (no traceback), exit code 2."""
    try:
        # without standalone mode, typer returns an exit code instead of exiting: 130 for Ctrl-C
        rv = app(args=argv, standalone_mode=False)
    except DelineoError as exc:
        print(f"delineo: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help and friends
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors
        try:  # typer vendors click as typer._click (a separate click, e.g. uvicorn's, is not the one raising)
            from typer import _click as click
        except ImportError:
            import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        import typer

        if isinstance(exc, typer.Abort):  # Ctrl-C at a prompt (typer's class: its vendored click has none)
            return 1
        raise
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
