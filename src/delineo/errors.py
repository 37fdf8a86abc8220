"""Errors users see. Every message names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class DelineoError(Exception):
    """Base class for errors delineo reports to a person (the CLI prints them without a traceback)."""


class InputError(DelineoError):
    """Bad input: a file that cannot be read, a mask that does not match its image, an empty folder."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class ConfigError(DelineoError):
    """A training or model configuration that cannot be used."""
