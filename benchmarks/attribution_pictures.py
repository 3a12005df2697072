"""The README's attribution pictures, made the way a user makes them, and where they sit.

Not a timing benchmark: it runs ``jaxvis attribute`` and ``jaxvis export --overlay`` on
three photos bundled with scikit-image (chelsea the cat, coffee, astronaut; no download)
with the embedded ImageNet VGG16 (no head), then arranges the exported overlays side by
side into ``docs/images/attribution_*.jpg`` and prints how much of each map lies where it
should.

Which channel. ``FACE_BOX`` was drawn by eye on the 451 x 300 photo around both eyes,
the nose and the mouth, with about 15 px to spare (0.37 of the image). The rule: of the
51 block5_conv3 channels (the top 10%) with the largest summed activation on chelsea at
224 px, take the one with the largest share of its activation inside the box. The same
rule with two parts of the box, ``PARTS`` (eyes: y 70-170; muzzle: y 190-290), picks an eye
channel and a muzzle channel. tests/test_attribution_photos.py pins the rule's choices,
and bounds the maps' measurements, on the same boxes; docs/attribution.md ("Pictures")
gives the numbers.

Measurement: the fraction of a map's mass ``|m|`` whose pixel centres lie in a box,
against the box's share of the image (what a map spread evenly would give).

    python -m benchmarks.attribution_pictures                 # writes docs/images/
    python -m benchmarks.attribution_pictures --out-dir /tmp/pictures
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PHOTOS = ("chelsea", "coffee", "astronaut")
CHELSEA_SIZE = (451, 300)  # (width, height) of skimage.data.chelsea()
FACE_BOX = (125, 70, 355, 290)  # (x0, y0, x1, y1) px of chelsea: eyes, nose and mouth
PARTS = {"eyes": (125, 70, 355, 170), "muzzle": (125, 190, 355, 290)}
LAYER = "block5_conv3"
TOP_SHARE = 0.10  # the rule considers the channels with the top 10% of activation mass
SIZE = 224
QUALITY = 88
CAPTION = 30  # px under each tile


def box_mask(shape: tuple[int, int], box=FACE_BOX) -> np.ndarray:
    """bool [h, w]: pixels (or cells) of an [h, w] grid over the photo whose centres lie
    in ``box``, given in chelsea's pixels (a whole-image resize keeps the fractions)."""
    h, w = shape
    x0, y0, x1, y1 = np.array(box, float) / np.array(CHELSEA_SIZE * 2, float)
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def mass_in_box(m: np.ndarray, box=FACE_BOX) -> float:
    """Fraction of ``|m|`` (float [h, w], or [h, w, C] summed over C) inside ``box``."""
    m = np.abs(np.asarray(m, np.float64))
    m = m.sum(-1) if m.ndim == 3 else m
    return float(m[box_mask(m.shape, box)].sum() / m.sum())


def rank_channels(acts: np.ndarray, box=FACE_BOX) -> list[tuple[int, float]]:
    """``[(channel, share inside box)]`` of the most active channels, best first.

    Args:
      acts: float [h, w, K], a layer's activation on one photo.
    """
    mass = acts.sum(axis=(0, 1))
    inside = acts[box_mask(acts.shape[:2], box)].sum(axis=0) / np.maximum(mass, 1e-12)
    active = np.argsort(-mass)[: int(round(TOP_SHARE * len(mass)))]
    return sorted(((int(k), float(inside[k])) for k in active), key=lambda r: -r[1])


def write_photos(folder: str) -> list[str]:
    """The photos as PNG files, as a user would have them."""
    import skimage.data

    paths = []
    for name in PHOTOS:
        paths.append(os.path.join(folder, f"{name}.png"))
        Image.fromarray(getattr(skimage.data, name)()).save(paths[-1])
    return paths


def run_jaxvis(*args: str) -> None:
    """``jaxvis ARGS`` (the console script's entry point, jaxvis/cli.py)."""
    cmd = [sys.executable, "-m", "jaxvis.cli", *map(str, args)]
    print("$ jaxvis", " ".join(map(str, args)), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "KERAS_BACKEND": "jax"})


def attribute(inputs, method: str, channel: int, out: str, extra=()) -> str:
    """Maps of ``method`` for one channel of ``LAYER``, then their overlays in ``out/``."""
    maps = out + ".h5"
    target = f"channel:{LAYER}:{channel}"
    run_jaxvis("attribute", *inputs, "--method", method, "--target", target, "--out", maps,
           "--size", SIZE, "--no-progress", "--overwrite", *extra)  # fmt: skip
    run_jaxvis("export", maps, "--out", out, "--overlay", "--force")
    return maps


def choose(chelsea: str) -> dict[str, int]:
    """The rule's channels on chelsea: ``{"face": k, "eyes": k, "muzzle": k}``."""
    import jaxvis
    from jaxvis.attribution.images import load_image

    model = jaxvis.vgg16("imagenet")
    acts = np.asarray(model.features(load_image(chelsea, SIZE)[None], LAYER)[LAYER])[0]
    share = box_mask(acts.shape[:2]).mean()
    chosen = {}
    for part, box in {"face": FACE_BOX, **PARTS}.items():
        ranked = rank_channels(acts, box)
        chosen[part] = ranked[0][0]
        top = ", ".join(f"{k} ({f:.2f})" for k, f in ranked[:6])
        grid = box_mask(acts.shape[:2], box).mean()
        print(f"{part}: {LAYER} channels by activation share in the box ({grid:.2f} of the "
              f"{acts.shape[0]}x{acts.shape[1]} grid): {top}")  # fmt: skip
    print(f"face box: {share:.3f} of the grid, {box_mask((SIZE, SIZE)).mean():.3f} of the image")
    return chosen


def tile(path: str, lines: tuple[str, str], box=None) -> Image.Image:
    """One picture with two caption lines under it, and ``box`` drawn if given."""
    picture = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    if box is not None:
        scale = np.array([SIZE / CHELSEA_SIZE[0], SIZE / CHELSEA_SIZE[1]] * 2)
        ImageDraw.Draw(picture).rectangle(list(np.array(box) * scale), outline="lime")
    out = Image.new("RGB", (SIZE, SIZE + CAPTION), "white")
    out.paste(picture, (0, 0))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default()
    for j, text in enumerate(lines):
        draw.text((3, SIZE + 2 + 13 * j), text, "black", font)
    return out


def sheet(rows: list[list[Image.Image]], dest: str, quality: int) -> str:
    """Tiles in rows, 2 px apart, saved as JPEG."""
    w, h = rows[0][0].size
    out = Image.new("RGB", (len(rows[0]) * (w + 2) + 2, len(rows) * (h + 2) + 2), "white")
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            out.paste(picture, (2 + c * (w + 2), 2 + r * (h + 2)))
    out.save(dest, quality=quality, optimize=True)
    print(f"wrote {dest} ({os.path.getsize(dest) // 1024} KB)")
    return dest


def measured(maps_path: str, row: int, box) -> tuple[float, float]:
    """(fraction of the map's mass in ``box``, the map's maximum) of one row."""
    from jaxvis.attribution.maps_file import open_maps

    with open_maps(maps_path) as f:
        m = f.map(row)
    return (mass_in_box(m, box) if np.abs(m).sum() else float("nan")), float(np.abs(m).max())


# The face sheet's map columns: (title, method, extra flags). Grad-CAM at the target's own
# layer is the channel's activation itself (docs/attribution.md, "The CAM layer").
COLUMNS = (
    ("activation", "gradcam", ("--layer", LAYER)),
    ("gradcam", "gradcam", ()),
    ("smoothgrad", "smoothgrad", ()),
)


def caption(title: str, channel: int, frac: float, peak: float, share: float | None):
    """Two lines: what the tile shows, then its raw maximum (overlays are normalised per
    map, so brightness is not comparable) and, with a box, the map's mass in it."""
    where = f"; in box {frac:.2f} (box {share:.2f})" if share is not None else ""
    return f"{title}, {LAYER}:{channel}", f"max {peak:.2g}{where}"


def face_sheet(work: str, photos: list[str], face: int, out_dir: str, quality: int) -> str:
    """Rows: the photos. Columns: the photo as the model sees it (224 x 224, squeezed),
    then the exported overlays of the face channel's activation, Grad-CAM and SmoothGrad."""
    share = box_mask((SIZE, SIZE)).mean()
    maps = {t: attribute(photos, m, face, os.path.join(work, t), x) for t, m, x in COLUMNS}
    rows = []
    for i, path in enumerate(photos):
        name, box = os.path.basename(path), (FACE_BOX if i == 0 else None)
        row = [tile(path, (name, "box: eyes, nose, mouth" if box else ""), box)]
        for title, file in maps.items():
            frac, peak = measured(file, i, FACE_BOX)
            if i == 0:
                print(f"{title}: {frac:.3f} of the map in the face box ({share:.3f} of image)")
            lines = caption(title, face, frac, peak, share if box else None)
            row.append(tile(os.path.join(work, title, f"{i}_{name[:-4]}.jpg"), lines, box))
        rows.append(row)
    return sheet(rows, os.path.join(out_dir, "attribution_face_channel.jpg"), quality)


def parts_sheet(work: str, chelsea: str, chosen: dict, out_dir: str, quality: int) -> str:
    """Chelsea's eye channel and muzzle channel: Grad-CAM and SmoothGrad overlays."""
    row = []
    for part, box in PARTS.items():
        share = box_mask((SIZE, SIZE), box).mean()
        for method in ("gradcam", "smoothgrad"):
            base = os.path.join(work, f"{part}_{method}")
            frac, peak = measured(attribute([chelsea], method, chosen[part], base), 0, box)
            print(f"{part} channel {chosen[part]}, {method}: {frac:.3f} in its box ({share:.3f})")
            lines = caption(f"{method} ({part})", chosen[part], frac, peak, share)
            row.append(tile(os.path.join(base, "0_chelsea.jpg"), lines, box))
    return sheet([row], os.path.join(out_dir, "attribution_eyes_muzzle.jpg"), quality)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=os.path.join("docs", "images"))
    p.add_argument("--work-dir", help="where the photos, maps and overlays go (default: temp)")
    p.add_argument("--quality", type=int, default=QUALITY, help="JPEG quality")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    work = args.work_dir or tempfile.mkdtemp(prefix="jaxvis-pictures-")
    os.makedirs(work, exist_ok=True)
    photos = write_photos(work)
    chosen = choose(photos[0])
    face_sheet(work, photos, chosen["face"], args.out_dir, args.quality)
    parts_sheet(work, photos[0], chosen, args.out_dir, args.quality)


if __name__ == "__main__":
    main()
