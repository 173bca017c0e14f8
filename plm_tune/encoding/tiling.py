"""PLM's dynamic tiling as arithmetic: the tile grid an image of a given size gets, without its pixels.

PLM's image processor (``PerceptionLMImageProcessor``, from perception_models' image transform) cuts an
image into a grid of ``tile_size`` tiles of at most ``max_tiles`` tiles in all:

* The candidate grids are every ``columns x rows`` with ``columns * rows <= max_tiles``, grouped by aspect
  ratio ``columns / rows``; ratios appear in the order they are first met going from ``max_tiles`` tiles down
  to 1 tile, columns ascending.
* If the image fits on some grid's canvas without shrinking, the grid on which it is upscaled most wins
  (measured on its shorter side after an aspect-preserving resize, rounded down as the processor does; on a
  tie the later candidate wins).
* Otherwise the image is shrunk onto the grid whose aspect ratio is closest to the image's (not wider for a
  landscape image, taller for a portrait one), the widest (landscape) or tallest (portrait) of that ratio.
* ``max_tiles=1`` is one tile. With ``"thumb+tile"`` a thumbnail tile comes first; ``"vanilla"`` is the
  thumbnail alone.

``tests/test_plan.py`` pins this against the processor on many sizes and budgets; ``plm_tune.encoding.costs``
uses it to count tiles from image headers.

    >>> tile_grid(1000, 700, tile_size=448, max_tiles=36)   # upscaled onto 7 x 5 tiles of 448 px
    (7, 5)
    >>> image_tiles((1000, 700), tile_size=448, max_tiles=4, vision_input_type="thumb+tile")
    5
"""

from __future__ import annotations

import functools
import math

__all__ = ["tile_grid", "image_tiles"]


@functools.lru_cache(maxsize=65536)  # a dataset's images come in few sizes; a plan asks each size several budgets
def image_tiles(size: tuple[int, int], *, tile_size: int, max_tiles: int, vision_input_type: str) -> int:
    """Tiles PLM's image processor makes of a ``(width, height)`` image, thumbnail included."""
    if vision_input_type == "vanilla":
        return 1
    columns, rows = tile_grid(*size, tile_size=tile_size, max_tiles=max_tiles)
    return 1 + columns * rows


def tile_grid(width: int, height: int, *, tile_size: int, max_tiles: int) -> tuple[int, int]:
    """``(columns, rows)`` of the tile grid PLM's image processor picks for a ``width x height`` image.

    Raises:
        ValueError: a size or budget below 1.
    """
    if min(width, height, tile_size, max_tiles) < 1:
        raise ValueError(f"Image size, tile size and tile budget must be >= 1, got {width}x{height}, "
                         f"tile {tile_size}, {max_tiles} tiles.")
    if max_tiles == 1:
        return (1, 1)
    by_ratio = _grids_by_ratio(max_tiles)
    best, best_side = None, 0.0
    for columns, rows in (grid for grids in by_ratio.values() for grid in grids):
        if columns * tile_size >= width and rows * tile_size >= height:
            side = _upscaled_side(width, height, columns * tile_size, rows * tile_size)
            if best is None or side >= best_side:
                best, best_side = (columns, rows), side
    if best is not None:
        return best
    aspect = width / height
    if aspect >= 1:
        ratio = min((r for r in by_ratio if r <= aspect), key=lambda r: abs(r - aspect))
        return max(by_ratio[ratio], key=lambda grid: grid[0])
    ratio = min((r for r in by_ratio if r > aspect), key=lambda r: abs(1 / r - 1 / aspect))
    return max(by_ratio[ratio], key=lambda grid: grid[1])


@functools.cache
def _grids_by_ratio(max_tiles: int) -> dict[float, tuple[tuple[int, int], ...]]:
    grouped: dict[float, list[tuple[int, int]]] = {}
    for count in range(max_tiles, 0, -1):
        for columns in range(1, count + 1):
            if count % columns == 0:
                grouped.setdefault(columns / (count // columns), []).append((columns, count // columns))
    return {ratio: tuple(grids) for ratio, grids in grouped.items()}


def _upscaled_side(width: int, height: int, canvas_width: int, canvas_height: int) -> float:
    """The image's shorter side after an aspect-preserving resize onto the canvas (the processor's arithmetic:
    the derived side is rounded down, a square image's is not)."""
    aspect = width / height
    factor = min(canvas_width / width, canvas_height / height)
    if aspect > 1:
        return math.floor(factor * width / aspect)
    if aspect < 1:
        return math.floor(factor * height * aspect)
    return factor * height
