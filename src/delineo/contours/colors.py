"""Fixed display colours per structure (RGB 0-255), used by overview images, RTSTRUCT and the viewer."""

from __future__ import annotations

STRUCTURE_COLORS: dict[str, tuple[int, int, int]] = {
    "PTV70": (230, 25, 75),
    "PTV63": (245, 130, 48),
    "PTV56": (255, 225, 25),
    "Brainstem": (145, 30, 180),
    "SpinalCord": (70, 240, 240),
    "RightParotid": (60, 180, 75),
    "LeftParotid": (0, 130, 200),
    "Esophagus": (240, 50, 230),
    "Larynx": (210, 245, 60),
    "Mandible": (250, 190, 212),
    "lung": (0, 130, 200),
    "heart": (230, 25, 75),
    "clavicle": (255, 225, 25),
}
_FALLBACK = [(128, 0, 0), (170, 110, 40), (0, 128, 128), (0, 0, 128), (128, 128, 0), (255, 215, 180), (170, 255, 195)]


def structure_color(name: str, index: int = 0) -> tuple[int, int, int]:
    """The fixed colour of a structure name; unknown names get a stable colour from a palette."""
    if name in STRUCTURE_COLORS:
        return STRUCTURE_COLORS[name]
    return _FALLBACK[(sum(map(ord, name)) + index) % len(_FALLBACK)]
