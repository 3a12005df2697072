"""Attribution maps as heat maps over their images, and contact sheets of them.

Each map is normalised on its own: its magnitude ``|m|`` (summed over channels for a
``keepdims`` map) divided by its 99th percentile and clipped to [0, 1], so that a few
extreme pixels do not wash out the rest (the convention of the saliency package's
``VisualizeImageGrayscale``, Smilkov et al. 2017, SmoothGrad). The sign is dropped:
negative evidence shows as hot as positive. Maps from different images are therefore not
comparable in brightness, only in where they are hot. The heat map uses a perceptually
uniform matplotlib colormap (``inferno`` by default) and is alpha-blended over the image
the model saw (the same resize, jaxvis/attribution/images.py).

matplotlib is optional: it is imported only here, when a colormap is needed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxvis.atlas.names import printable
from jaxvis.attribution import images as image_files
from jaxvis.attribution.maps_file import FINISHED, open_maps
from jaxvis.errors import JaxvisError, choices

COLORMAPS = ("inferno", "viridis", "magma", "plasma", "cividis")  # perceptually uniform
EXTRA = "site"  # the extra that brings matplotlib, shared with jaxvis/site/plots.py
PERCENTILE = 99.0
ALPHA = 0.5
FORMATS = {"jpg": "JPEG", "png": "PNG"}
SHEET_TILES = 64  # overlays per contact sheet: 8 x 8
MAX_SHEET_SIDE = 4096  # px; tiles shrink beyond this
MIN_TILE = 128  # px; smaller overlays are enlarged on a sheet, so captions fit
CAPTION_HEIGHT = 26  # px: two lines of PIL's default font
GAP = 2


def normalize(m: np.ndarray) -> np.ndarray:
    """float32 [h, w] in [0, 1]: ``|m|`` over its 99th percentile, clipped.

    Args:
      m: float [h, w] or [h, w, C] (its magnitudes are summed over C).
    """
    m = np.abs(np.asarray(m, np.float32))
    if m.ndim == 3:
        m = m.sum(axis=-1)
    m = np.nan_to_num(m, nan=0.0, posinf=0.0)
    scale = float(np.percentile(m, PERCENTILE)) if m.size else 0.0
    scale = scale if scale > 0 else float(m.max(initial=0.0))  # a map hot on <1% of pixels
    return np.clip(m / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(m)


def heatmap(values: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """uint8 [h, w, 3]: ``values`` (float [h, w] in [0, 1]) through a matplotlib colormap."""
    if colormap not in COLORMAPS:
        raise JaxvisError(f"unknown colormap {colormap!r}; valid colormaps: {choices(COLORMAPS)}")
    try:
        from matplotlib import colormaps
    except ImportError:
        raise JaxvisError(
            f'overlays need matplotlib, which is not installed; pip install "jaxvis[{EXTRA}]"'
        ) from None
    return colormaps[colormap](np.asarray(values, np.float32), bytes=True)[..., :3]


def overlay(
    image: np.ndarray, m: np.ndarray, *, colormap: str = "inferno", alpha: float = ALPHA
) -> np.ndarray:
    """The map as a heat map over the image.

    Args:
      image: float [H, W, 3] RGB in [0, 1].
      m: the map, float [h, w] or [h, w, C]; resized (bilinear) to [H, W] if it differs.
      colormap: one of :data:`COLORMAPS`.
      alpha: weight of the heat map, in [0, 1].

    Returns:
      uint8 [H, W, 3]: ``(1 - alpha) * image + alpha * heatmap``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise JaxvisError(f"alpha must be in [0, 1]; got {alpha!r}")
    values = normalize(m)
    height, width = image.shape[:2]
    if values.shape != (height, width):
        values = np.asarray(
            Image.fromarray(values, "F").resize((width, height), Image.Resampling.BILINEAR)
        )
        values = np.clip(values, 0.0, 1.0)
    heat = heatmap(values, colormap).astype(np.float32)
    blended = (1.0 - alpha) * np.asarray(image, np.float32) * 255.0 + alpha * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def contact_sheet(tiles: Sequence[np.ndarray], captions: Sequence[tuple[str, str]]) -> Image.Image:
    """A roughly square grid of pictures, each with two caption lines under it.

    Args:
      tiles: uint8 [H, W, 3] pictures of one size.
      captions: ``(image name, target)`` per tile; cut to the tile's width.
    """
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    size = tiles[0].shape[0]
    tile = max(16, min(max(size, MIN_TILE), (MAX_SHEET_SIDE - GAP * (cols + 1)) // cols))
    cell_w, cell_h = tile + GAP, tile + CAPTION_HEIGHT + GAP
    sheet = Image.new("RGB", (cols * cell_w + GAP, rows * cell_h + GAP), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for k, (picture, lines) in enumerate(zip(tiles, captions, strict=True)):
        x, y = GAP + (k % cols) * cell_w, GAP + (k // cols) * cell_h
        shown = Image.fromarray(picture)
        if tile != size:
            resample = Image.Resampling.NEAREST if tile > size else Image.Resampling.LANCZOS
            shown = shown.resize((tile, tile), resample)
        sheet.paste(shown, (x, y))
        for j, text in enumerate(lines):
            draw.text((x, y + tile + 1 + 12 * j), _fit(draw, font, text, tile), "black", font)
    return sheet


def _fit(draw, font, text: str, width: int) -> str:
    """``text``, escaped, cut with "..." to fit ``width`` pixels."""
    text = printable(text)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def export_overlays(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fmt: str = "jpg",
    colormap: str = "inferno",
    alpha: float = ALPHA,
    sheets: bool = True,
    force: bool = False,
    warn: Callable[[str], None] = print,
) -> list[str]:
    """Writes one overlay per finished map, ``<index>_<image name>.<fmt>``, and contact
    sheets ``sheet_<page>.<fmt>`` of :data:`SHEET_TILES` overlays each.

    Each image is read again from its recorded path and must still have its recorded
    SHA-256; one that is missing at the start stops the export before anything is
    written, one that changed or fails to decode is skipped with a warning.

    Args:
      path: the maps file.
      out_dir: output folder; created if missing.
      fmt: ``"jpg"`` or ``"png"``.
      colormap: one of :data:`COLORMAPS`; alpha: the heat map's weight.
      sheets: also write the contact sheets.
      force: replace files of the same names (default: refuse before writing anything).
      warn: called with one line per skipped image.

    Returns:
      The paths written, in order.
    """
    fmt = fmt.lower().removeprefix(".").replace("jpeg", "jpg")
    if fmt not in FORMATS:
        raise JaxvisError(f"unknown image format {fmt!r}; valid formats: {choices(FORMATS)}")
    heatmap(np.zeros((1, 1), np.float32), colormap)  # matplotlib and the name, checked first
    out_dir = os.fspath(out_dir)
    with open_maps(path) as maps:
        rows = np.flatnonzero(maps.done == FINISHED).tolist()
        if not rows:
            raise JaxvisError(f"{path} holds no finished maps yet; run jaxvis attribute first")
        names = {i: os.path.join(out_dir, n) for i, n in _file_names(maps.paths, rows, fmt)}
        pages = [rows[i : i + SHEET_TILES] for i in range(0, len(rows), SHEET_TILES)]
        sheet_names = [os.path.join(out_dir, f"sheet_{p:03d}.{fmt}") for p in range(len(pages))]
        sheet_names = sheet_names if sheets else [None] * len(pages)
        _check_plan(maps, rows, [*names.values(), *filter(None, sheet_names)], force)
        _make_dir(out_dir)
        written = []
        for page, sheet_name in zip(pages, sheet_names, strict=True):
            draw = functools.partial(overlay, colormap=colormap, alpha=alpha)
            tiles, captions = _write_page(maps, page, names, draw, fmt, written, warn)
            if sheet_name and tiles:
                written.append(_save(contact_sheet(tiles, captions), sheet_name, fmt))
    return written


def _write_page(maps, page, names, draw, fmt, written, warn) -> tuple[list, list]:
    """Writes the overlays of one sheet's images; returns them and their captions."""
    tiles, captions = [], []
    for i in page:
        try:
            pixels = image_files.load_image(maps.paths[i], maps.header.image_size, maps.sha256[i])
        except image_files.Unreadable as e:
            warn(f"skipping {printable(maps.paths[i])}: {e}")
            continue
        picture = draw(pixels, maps.map(i))
        written.append(_save(Image.fromarray(picture), names[i], fmt))
        tiles.append(picture)
        captions.append((os.path.basename(maps.paths[i]), maps.targets[i]))
    return tiles, captions


def _file_names(paths: Sequence[str], rows: list[int], fmt: str) -> list[tuple[int, str]]:
    """``(row, "0042_cat.jpg")``: the index keeps names unique and sorted; the image's
    name is reduced to safe characters, so a recorded path cannot point outside."""
    width = len(str(len(paths) - 1))
    names = []
    for i in rows:
        stem = os.path.splitext(os.path.basename(paths[i]))[0]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip(".")[:80]
        names.append((i, f"{i:0{width}d}_{stem}.{fmt}" if stem else f"{i:0{width}d}.{fmt}"))
    return names


def _check_plan(maps, rows: list[int], dests: list[str], force: bool) -> None:
    missing = [maps.paths[i] for i in rows if not os.path.isfile(maps.paths[i])]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise JaxvisError(
            f"the image {printable(missing[0])}{more} of {maps.path} is missing; overlays are "
            "drawn over the images the maps were made from, at their recorded paths"
        )
    existing = next((d for d in dests if os.path.lexists(d)), None)
    if existing is not None and not force:
        raise JaxvisError(
            f"{printable(existing)} already exists; pass --force (force=True) to replace "
            "existing files"
        )


def _make_dir(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise JaxvisError(f"cannot create output directory {out_dir}: {e.strerror or e}") from None


def _save(picture: Image.Image, dest: str, fmt: str) -> str:
    """Saves atomically (a temporary file in the same folder, then a rename), with the
    mode a new file gets under the umask rather than mkstemp's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(suffix=".part", dir=os.path.dirname(dest) or ".")
        with os.fdopen(fd, "wb") as fh:
            picture.save(fh, format=FORMATS[fmt], **({"quality": 95} if fmt == "jpg" else {}))
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise JaxvisError(f"cannot write {printable(dest)}: {e.strerror or e}") from None
    return dest
