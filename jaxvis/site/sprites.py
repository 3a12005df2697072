"""Sprite sheets: many pictures in one image file, so a page makes a few requests.

As Distill's and OpenAI Microscope's feature atlases do, the pictures of a block of
units share one image; the page shows each through a window onto it (an ``<img>`` of the
whole sheet, offset inside a clipping box). A layer of 512 units is then 8 thumbnail
sheets and 8 full-size sheets, instead of 1,024 files.

Layout: block ``k`` holds rows ``[BLOCK * k, BLOCK * (k + 1))`` of the atlas in row
order (the order written), so an atlas that grows changes only its last block and adds
new ones. Within a block, cell ``c`` is at column ``c % COLUMNS``, row ``c // COLUMNS``;
a unit with ``B`` diversity images takes ``B`` adjacent columns. jaxvis/site/script.py
computes the same positions.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

BLOCK = 64  # units per sheet: 8 x 8 cells
COLUMNS = 8  # cells (units) per sheet row
FORMATS = {"jpeg": ("JPEG", "jpg"), "png": ("PNG", "png")}
_FILL = 255  # white, the page background, in the unused cells of a last sheet


def sheet(cells: np.ndarray, columns: int) -> np.ndarray:
    """Tiles ``cells`` row-major into one picture.

    Args:
      cells: uint8 [M, H, W, 3].
      columns: cells per row.

    Returns:
      uint8 [ceil(M / columns) * H, columns * W, 3]; unused cells are white.
    """
    m, h, w, c = cells.shape
    rows = max(1, -(-m // columns))
    padded = np.full((rows * columns, h, w, c), _FILL, np.uint8)
    padded[:m] = cells
    return (
        padded.reshape(rows, columns, h, w, c)
        .transpose(0, 2, 1, 3, 4)
        .reshape(rows * h, columns * w, c)
    )


def per_unit(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] or [N, B, H, W, 3] (B diversity images) as [N, B, H, W, 3]."""
    return images[:, None] if images.ndim == 4 else images


def thumbnails(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [M, H, H, 3] resized to [M, size, size, 3] (area averaging, as a browser
    shrinking an image would; unchanged when already ``size``)."""
    if images.shape[1] == size:
        return images
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, picture in enumerate(images):
        small = Image.fromarray(picture).resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(small)
    return out


def encode(picture: np.ndarray, fmt: str, quality: int) -> bytes:
    """uint8 [H, W, 3] as a JPEG or PNG file's bytes."""
    kind = FORMATS[fmt][0]
    options = {"quality": quality} if kind == "JPEG" else {"compress_level": 6}
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, kind, **options)
    return buffer.getvalue()


def thumb_size(image_size: int, largest: int) -> int:
    """The side of the thumbnails in the sheets: the pictures' own, at most ``largest``."""
    return min(image_size, largest)


def zoom(size: int, at_least: int) -> int:
    """The integer factor that shows ``size`` px at ``at_least`` px or more (1 if it
    already is); integer, so small pictures scale up pixel for pixel."""
    return max(1, -(-at_least // size))
