"""Model input tiling, with its layout recorded so a mask can be mapped onto the visual tokens.

As the released inference code feeds images (:func:`model_tiles`):

* **one image**: InternVL dynamic tiling -- the image is resized to ``cols x rows`` tiles of
  ``image_size`` pixels (the grid whose aspect ratio is closest to the image's, among grids of at most
  ``max_tiles`` tiles), cut row-major, and -- when there is more than one tile -- followed by a
  thumbnail of the whole image;
* **several images** (a before/after pair, optical + SAR): each image resized to one tile.

Each tile gives ``tokens_per_side**2`` visual tokens, row-major inside the tile. ``TileLayout`` says
where each token lies on the image. Resizes are PIL bicubic, normalisation float32 ImageNet mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class TileLayout:
    """``cols`` x ``rows`` tiles (+ an optional thumbnail) of ``side`` x ``side`` tokens each."""

    cols: int
    rows: int
    side: int
    thumbnail: bool

    @property
    def tiles(self) -> int:
        return self.cols * self.rows + (1 if self.thumbnail else 0)

    @property
    def tokens(self) -> int:
        """Visual tokens of the image, thumbnail included."""
        return self.tiles * self.side * self.side

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the token grid over the whole image, thumbnail excluded."""
        return self.rows * self.side, self.cols * self.side

    def token_index(self, grid_row: np.ndarray, grid_col: np.ndarray) -> np.ndarray:
        """Token-grid positions -> index in the image's visual-token sequence (tile-major, row-major)."""
        tile = (grid_row // self.side) * self.cols + grid_col // self.side
        return tile * self.side * self.side + (grid_row % self.side) * self.side + grid_col % self.side

    def grid_position(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`token_index` for non-thumbnail tokens."""
        per_tile = self.side * self.side
        tile, local = np.divmod(np.asarray(index), per_tile)
        trow, tcol = np.divmod(tile, self.cols)
        lrow, lcol = np.divmod(local, self.side)
        return trow * self.side + lrow, tcol * self.side + lcol


def choose_grid(width: int, height: int, image_size: int, min_tiles: int = 1, max_tiles: int = 12) -> tuple[int, int]:
    """(cols, rows) whose aspect ratio is closest to width/height (InternVL's rule, ties to more tiles
    when the image has the pixels to fill them)."""
    aspect = width / height
    grids = sorted(
        {(c, r) for n in range(min_tiles, max_tiles + 1) for c in range(1, n + 1) for r in range(1, n + 1)
         if min_tiles <= c * r <= max_tiles},
        key=lambda g: g[0] * g[1],
    )
    best, best_diff = (1, 1), float("inf")
    area = width * height
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def _normalise(tiles: list[np.ndarray]) -> np.ndarray:
    arr = (np.stack(tiles).astype(np.float32) / 255.0 - MEAN) / STD
    return arr.transpose(0, 3, 1, 2).copy()


def single_tile(image: np.ndarray, image_size: int, tokens_per_side: int) -> tuple[np.ndarray, TileLayout]:
    """uint8 (H, W, 3) -> one normalised tile (1, 3, S, S), the image resized to S x S, and its 1x1 layout."""
    from PIL import Image

    tile = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BICUBIC))
    return _normalise([tile]), TileLayout(1, 1, tokens_per_side, False)


def model_tiles(images: list[np.ndarray], image_size: int, tokens_per_side: int, max_tiles: int = 12,
                use_thumbnail: bool = True) -> list[tuple[np.ndarray, TileLayout]]:
    """The release's input rule: one image is dynamically tiled, each image of several is one tile."""
    if len(images) == 1:
        return [tile_image(images[0], image_size, tokens_per_side, max_tiles, use_thumbnail)]
    return [single_tile(image, image_size, tokens_per_side) for image in images]


def tile_image(image: np.ndarray, image_size: int, tokens_per_side: int, max_tiles: int = 12,
               use_thumbnail: bool = True) -> tuple[np.ndarray, TileLayout]:
    """uint8 (H, W, 3) -> normalised tiles (T, 3, S, S) float32 and their :class:`TileLayout`."""
    from PIL import Image

    h, w = image.shape[:2]
    cols, rows = choose_grid(w, h, image_size, 1, max_tiles)
    pil = Image.fromarray(image)
    big = np.asarray(pil.resize((cols * image_size, rows * image_size), Image.BICUBIC))
    tiles = [big[r * image_size:(r + 1) * image_size, c * image_size:(c + 1) * image_size]
             for r in range(rows) for c in range(cols)]
    thumbnail = use_thumbnail and cols * rows > 1
    if thumbnail:
        tiles.append(np.asarray(pil.resize((image_size, image_size), Image.BICUBIC)))
    return _normalise(tiles), TileLayout(cols, rows, tokens_per_side, thumbnail)
