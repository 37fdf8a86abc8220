"""Progress of long commands as a person meets it: a bar on a terminal, one line per step in a log.

>>> with Steps(3, "evaluate", unit="case") as bar:      # doctest: +SKIP
...     for case in cases:
...         ...
...         bar.step(case)

On a terminal (stderr is a TTY) this is a tqdm bar; otherwise (a log file, CI, ``nohup``) each step
prints one line to stderr: ``evaluate 2/3 case pt_202 (1.4 s/case, 0:00:03 elapsed, 0:00:01 left)``.
``DELINEO_PROGRESS=bar|lines|off`` overrides the choice.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any, TextIO


def _mode(stream: TextIO) -> str:
    forced = os.environ.get("DELINEO_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(round(seconds))))


class Steps:
    """``total`` steps of a job named ``desc``; call :meth:`step` after each one."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "step", stream: TextIO | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.mode = _mode(self.stream)
        self.n = 0
        self.t0 = time.monotonic()
        self.bar: Any = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def step(self, what: str = "", n: int = 1) -> None:
        """One more step done; ``what``: which one (a case id, a run name)."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if what:
                self.bar.set_postfix_str(what, refresh=False)
        elif self.mode == "lines":
            elapsed = time.monotonic() - self.t0
            per = elapsed / self.n if self.n else 0.0
            left = f", {_clock(per * (self.total - self.n))} left" if self.total else ""
            of = f"/{self.total}" if self.total else ""
            print(f"{self.desc} {self.n}{of} {self.unit} {what} ({per:.1f} s/{self.unit}, {_clock(elapsed)} elapsed{left})".replace("  ", " "),
                  file=self.stream, flush=True)

    def write(self, message: str) -> None:
        """A message that does not break the bar."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        elif self.mode != "off":
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
