"""delineo: auto-contouring for radiotherapy.

The package reads like the data flow: ``data`` -> ``models`` -> ``training`` ->
``inference`` -> ``metrics`` -> ``contours`` -> ``cli``. The notebook-facing API
lives in :mod:`delineo.api`.
"""

__version__ = "0.1.0"

from delineo.errors import DelineoError, InputError  # noqa: E402

__all__ = ["DelineoError", "InputError", "__version__"]
