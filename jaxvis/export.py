"""Atlas to image files: one picture per filter, and optional contact sheets.

File names follow the keras-vis filter-visualization blog post (MachineCurve, 2019,
"What do ConvNets see?"): ``os.path.join(folder, layer_nm + '_' + str(filter_id) +
'.jpg')``, i.e. ``block1_conv1_2.jpg``, no zero padding. Contact sheets are
``<layer>_grid.<fmt>``. Every file is written to a temporary name in the same directory
and renamed into place, so an error or a kill never leaves a half-written picture; files
of the same names are replaced only when asked (``force``), and all are checked first.

Animations (``animate``, for atlases written with snapshots) are ``<layer>_<filter>.webp``:
the unit's snapshots, then its final picture, held longer. WebP rather than GIF: GIF has
256 colours a frame, which bands and dithers these pictures, and Pillow's GIF quantizer
took 30x as long; lossy WebP at quality 90 was a third the size of lossless WebP and
half that of GIF (17 frames of a 224 px crop of docs/images/blog_*.jpg: 470-550 KiB,
against 1.6 MiB lossless and 860-940 KiB GIF), and every current browser plays it.
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
ANIMATION = "webp"
WEBP_QUALITY = 90
FRAME_MS = 100  # each snapshot
FINAL_MS = 1500  # the final picture, held so that the loop pauses on it
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
    animate: bool = False,
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
      animate: also write ``<layer>_<filter>.webp`` per unit, an animation of its
        snapshots followed by its final picture; every chosen layer must have snapshots
        (``jaxvis atlas --snapshots K``). Consecutive frames that are the same (the last
        snapshot is the final picture when K divides the steps) become one longer frame,
        so a file has S + 1 frames, or S when K divides the steps.

    Returns:
      The paths written, in order. Each file gets the mode any new file gets under the
      process's umask (0644 under the usual 022), not the private mode of a temp file.
    """
    fmt = _format(fmt)
    out_dir = os.fspath(out_dir)
    with open_atlas(path) as atlas:
        names = _chosen_layers(atlas, layers)
        if animate:
            _refuse_without_snapshots(atlas, names)
        plan = _plan(atlas, names, out_dir, fmt, grid, animate)
        if not force:
            _refuse_existing(plan)
        _make_dir(out_dir)
        mode = _file_mode()
        written = []
        for dest, name, row, kind in plan:  # one row at a time, never a whole layer
            view = atlas[name]
            if kind == "sheet":
                written.append(_save(contact_sheet(view), dest, fmt, mode))
            elif kind == ANIMATION:
                written.append(_save_animation(view, row, dest, mode))
            else:
                written.append(
                    _save(Image.fromarray(np.asarray(view.images[row])), dest, fmt, mode)
                )
    return written


def _format(fmt: str) -> str:
    fmt = fmt.lower().removeprefix(".")
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in FORMATS:
        raise JaxvisError(f"unknown image format {fmt!r}; valid formats: {choices(FORMATS)}")
    return fmt


def _plan(atlas, names: list[str], out_dir: str, fmt: str, grid: bool, animate: bool) -> list:
    """``(dest, layer, row, kind)`` for every file to write; kind is ``fmt``, ``"sheet"``
    (row None) or :data:`ANIMATION`."""
    plan = []
    for name in names:
        view = atlas[name]
        kinds = [fmt, ANIMATION] if animate else [fmt]
        for row, unit in enumerate(view.filters.tolist()):
            for kind in kinds:
                plan.append((os.path.join(out_dir, f"{name}_{unit}.{kind}"), name, row, kind))
        if grid and len(view):
            plan.append((os.path.join(out_dir, f"{name}_grid.{fmt}"), name, None, "sheet"))
    return plan


def _refuse_without_snapshots(atlas, names: list[str]) -> None:
    """Animations need snapshots in every chosen layer that has pictures, and in one at
    least."""
    has = {name: atlas[name].snapshots is not None for name in atlas.layers}
    lacking = [name for name in names if not has[name] and len(atlas[name])]
    if not lacking and any(has[name] for name in names):
        return
    which = f"layer {printable(lacking[0])} of " if lacking else ""
    others = [printable(name) for name in atlas.layers if has[name]]
    hint = f"animate the layers that have them (--layers {','.join(others)}), or " if others else ""
    raise JaxvisError(
        f"{which}{printable(atlas.path)} has no snapshots to animate; {hint}write the atlas "
        "with snapshots (jaxvis atlas --snapshots K, K from 1 to the steps)"
    )


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


def _save(picture: Image.Image, dest: str, fmt: str, mode: int, **options) -> str:
    """Saves atomically: a temporary file in the same directory, given ``mode`` (mkstemp
    makes it 0600), then a rename. ``options`` go to ``Image.save``."""
    directory, name = os.path.split(dest)
    if fmt == "jpg":
        options = {"quality": JPEG_QUALITY, **options}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory or ".")
        with os.fdopen(fd, "wb") as fh:
            picture.save(fh, format=FORMATS.get(fmt, fmt.upper()), **options)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise JaxvisError(f"cannot write {printable(dest)}: {e.strerror or e}") from None
    return dest


def _save_animation(view: LayerView, row: int, dest: str, mode: int) -> str:
    """One unit's snapshots [S, H, W, 3] and then its final picture, as an animated WebP
    that loops forever."""
    frames = [Image.fromarray(f) for f in np.asarray(view.snapshots[row])]
    frames.append(Image.fromarray(np.asarray(view.images[row])))
    durations = [FRAME_MS] * (len(frames) - 1) + [FINAL_MS]
    options = {"save_all": True, "append_images": frames[1:], "duration": durations}
    return _save(frames[0], dest, ANIMATION, mode, loop=0, quality=WEBP_QUALITY, **options)


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
