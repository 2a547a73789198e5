"""A minimal numpy canvas for ``rgb_array`` frames (no pygame or display needed)."""

from __future__ import annotations

import numpy as np


class Canvas:
    """An ``[height, width, 3]`` uint8 image with filled rectangles and discs."""

    def __init__(self, height: int, width: int, background: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.pixels = np.empty((height, width, 3), np.uint8)
        self.pixels[:] = background

    def rect(self, top: int, left: int, height: int, width: int, color: tuple[int, int, int]) -> None:
        top, left = max(top, 0), max(left, 0)
        self.pixels[top : top + max(height, 0), left : left + max(width, 0)] = color

    def disc(self, center_row: int, center_col: int, radius: int, color: tuple[int, int, int]) -> None:
        rows, cols = np.ogrid[: self.pixels.shape[0], : self.pixels.shape[1]]
        inside = (rows - center_row) ** 2 + (cols - center_col) ** 2 <= radius**2
        self.pixels[inside] = color
