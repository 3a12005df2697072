"""Atlas to image files: one picture per filter, and optional contact sheets.

File names follow the keras-vis filter-visualization blog post (MachineCurve, 2019,
"What do ConvNets see?"): ``os.path.join(folder, layer_nm + '_' + str(filter_id) +
'.jpg')``, i.e. ``block1_conv1_2.jpg``, no zero padding. Contact sheets are
``<layer>_grid.<fmt>``. Every file is written to a temporary name in the same directory
and renamed into place, so an error or a kill never leaves a half-written picture; files
of the same names are replaced only when asked (``force``), and all are checked first.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxvis.atlas.names import printable
from jaxvis.atlas.reader import LayerView, open_atlas
from jaxvis.errors import JaxvisError, choices

FORMATS = {"jpg": "JPEG", "png": "PNG"}
JPEG_QUALITY = 95
MAX_SHEET_SIDE = 4096  # px; tiles are downscaled beyond this so a sheet stays viewable
LABEL_HEIGHT = 14  # px under each tile; PIL's default font is about 10 px tall
GAP = 2  # px between tiles


def export_atlas(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fmt: str = "jpg",
    layers: Sequence[str] | str | None = None,
    grid: bool = False,
    force: bool = False,
) -> list[str]:
    """Writes ``out_dir/<layer>_<filter>.<fmt>`` for every image of the chosen layers.

    Args:
      path: the atlas file.
      out_dir: output directory; created if missing.
      fmt: ``"jpg"`` or ``"png"``.
      layers: layer names (or a comma-separated string); all layers of the atlas if None.
      grid: also write a labelled contact sheet ``<layer>_grid.<fmt>`` per layer.
      force: replace files of the same names. Without it an existing file is refused
        before anything is written, so an export never half-replaces an earlier one.

    Returns:
      The paths written, in order. Each file gets the mode any new file gets under the
      process's umask (0644 under the usual 022), not the private mode of a temp file.
    """
    fmt = _format(fmt)
    out_dir = os.fspath(out_dir)
    with open_atlas(path) as atlas:
        plan = _plan(atlas, _chosen_layers(atlas, layers), out_dir, fmt, grid)
        if not force:
            _refuse_existing(plan)
        _make_dir(out_dir)
        mode = _file_mode()
        written = []
        for dest, name, row in plan:
            view = atlas[name]
            if row is None:
                picture = contact_sheet(view)
            else:  # one row at a time: an export never holds more than one picture
                picture = Image.fromarray(np.asarray(view.images[row]))
            written.append(_save(picture, dest, fmt, mode))
    return written


def _format(fmt: str) -> str:
    fmt = fmt.lower().removeprefix(".")
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in FORMATS:
        raise JaxvisError(f"unknown image format {fmt!r}; valid formats: {choices(FORMATS)}")
    return fmt


def _plan(atlas, names: list[str], out_dir: str, fmt: str, grid: bool) -> list[tuple]:
    """``(dest, layer, row)`` for every file to write; ``row`` is None for a sheet."""
    plan = []
    for name in names:
        view = atlas[name]
        for row, unit in enumerate(view.filters.tolist()):
            plan.append((os.path.join(out_dir, f"{name}_{unit}.{fmt}"), name, row))
        if grid and len(view):
            plan.append((os.path.join(out_dir, f"{name}_grid.{fmt}"), name, None))
    return plan


def _refuse_existing(plan: list[tuple]) -> None:
    # lexists: a symlink of the same name counts too (the rename would replace it).
    existing = next((dest for dest, *_ in plan if os.path.lexists(dest)), None)
    if existing is not None:
        raise JaxvisError(
            f"{printable(existing)} already exists; pass --force (force=True) to replace "
            "existing files"
        )


def _file_mode() -> int:
    """The mode a new file gets under the current umask, e.g. 0o644 under 0o022.

    os.umask can only be read by setting it, so it is set and put back at once, here
    and only here (once per export).
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _chosen_layers(atlas, layers: Sequence[str] | str | None) -> list[str]:
    if layers is None:
        return list(atlas.layers)
    if isinstance(layers, str):
        layers = [s.strip() for s in layers.split(",") if s.strip()]
    for name in layers:
        atlas[name]  # raises a one-line error listing the layers in the atlas
    return list(dict.fromkeys(layers))


def _make_dir(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise JaxvisError(f"cannot create output directory {out_dir}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK):
        raise JaxvisError(f"output directory {out_dir} is not writable")


def _save(picture: Image.Image, dest: str, fmt: str, mode: int) -> str:
    """Saves atomically: a temporary file in the same directory, given ``mode`` (mkstemp
    makes it 0600), then a rename."""
    directory, name = os.path.split(dest)
    options = {"quality": JPEG_QUALITY} if fmt == "jpg" else {}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory or ".")
        with os.fdopen(fd, "wb") as fh:
            picture.save(fh, format=FORMATS[fmt], **options)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise JaxvisError(f"cannot write {printable(dest)}: {e.strerror or e}") from None
    return dest


def contact_sheet(view: LayerView) -> Image.Image:
    """A roughly square grid of a layer's pictures, each labelled with its filter number.

    Tiles keep their size unless the sheet would exceed ``MAX_SHEET_SIDE`` pixels a side.
    """
    n = len(view)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    size = view.images.shape[1]
    tile = max(8, min(size, (MAX_SHEET_SIDE - GAP * (cols + 1)) // cols))
    cell_w, cell_h = tile + GAP, tile + LABEL_HEIGHT + GAP
    sheet = Image.new("RGB", (cols * cell_w + GAP, rows * cell_h + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, unit in enumerate(view.filters.tolist()):
        x = GAP + (i % cols) * cell_w
        y = GAP + (i // cols) * cell_h
        picture = Image.fromarray(np.asarray(view.images[i]))
        if tile != size:
            picture = picture.resize((tile, tile), Image.Resampling.LANCZOS)
        sheet.paste(picture, (x, y))
        label = str(unit)
        width = draw.textlength(label, font=font)
        draw.text((x + (tile - width) / 2, y + tile + 1), label, fill="black", font=font)
    return sheet
