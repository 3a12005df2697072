"""Where every file of a site is, and where each picture sits in its sprite sheet.

::

    DIR/index.html                      the atlas: provenance, one row per layer
    DIR/assets/site.css, site.js        shared by every page
    DIR/<stem>.html                     a layer: the grid, and the unit view (#unit-17)
    DIR/<stem>/thumbs-<k>.<ext>         block k's thumbnails, one sheet
    DIR/<stem>/full-<k>.<ext>           block k's full-size pictures, one sheet
    DIR/<stem>/plot-<unit>.png          a unit's objective curve
    DIR/<stem>/snapshots-<unit>.<ext>   a unit's snapshots, side by side
    DIR/.jaxvis-site.json               what each file was made from (jaxvis/site/files.py)

``<stem>`` is the layer's safe file stem (jaxvis/site/names.py). The page's script gets
the same paths as templates (:func:`templates`), so it never builds one from a name.
"""

from __future__ import annotations

import dataclasses

from jaxvis.errors import JaxvisError, choices
from jaxvis.site import sprites


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiteOptions:
    """How a site is built.

    Attributes:
      image_format: ``"jpeg"`` (small files) or ``"png"`` (lossless) for pictures.
      quality: JPEG quality, 1-95.
      thumb_size: largest side of a thumbnail in the sheets, px; smaller pictures keep
        their own size.
      thumb_display: thumbnails smaller than this are shown enlarged by an integer factor.
      full_display: likewise for the unit view's full-size picture.
      plots: draw each unit's objective curve (needs matplotlib, ``jaxvis[site]``).
      workers: processes drawing the curves (None: the CPUs this process may use).
    """

    image_format: str = "jpeg"
    quality: int = 90
    thumb_size: int = 96
    thumb_display: int = 64
    full_display: int = 256
    plots: bool = True
    workers: int | None = None

    def __post_init__(self):
        if self.image_format not in sprites.FORMATS:
            raise JaxvisError(
                f"unknown image format {self.image_format!r}; valid: {choices(sprites.FORMATS)}"
            )
        if not 1 <= self.quality <= 95:
            raise JaxvisError(f"JPEG quality must be 1-95; got {self.quality}")
        if self.workers is not None and self.workers < 1:
            raise JaxvisError(
                f"workers must be at least 1, or None for all CPUs; got {self.workers}"
            )
        for name in ("thumb_size", "thumb_display", "full_display"):
            if getattr(self, name) < 1:
                raise JaxvisError(f"{name} must be at least 1 px; got {getattr(self, name)}")

    @property
    def ext(self) -> str:
        return sprites.FORMATS[self.image_format][1]


def templates(stem: str, ext: str) -> dict[str, str]:
    """File paths of one layer, relative to the site, with ``{k}`` (block) or ``{unit}``."""
    return {
        "thumbs": f"{stem}/thumbs-{{k}}.{ext}",
        "full": f"{stem}/full-{{k}}.{ext}",
        "plot": f"{stem}/plot-{{unit}}.png",
        "snapshots": f"{stem}/snapshots-{{unit}}.{ext}",
    }


def path(stem: str, ext: str, kind: str, **where: int) -> str:
    """One file's site-relative path, e.g. ``path(stem, "jpg", "full", k=0)``."""
    return templates(stem, ext)[kind].format(**where)


def cell(row: int, per_unit: int = 1, image: int = 0) -> tuple[int, int, int]:
    """``(block, column, row_in_sheet)`` of image ``image`` of atlas row ``row``, in a
    sheet whose units are ``per_unit`` cells wide (sprites.py)."""
    block, c = divmod(row, sprites.BLOCK)
    return block, (c % sprites.COLUMNS) * per_unit + image, c // sprites.COLUMNS
