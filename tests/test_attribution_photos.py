"""Attribution maps of a real photo sit where their channel fires: chelsea the cat
(scikit-image's bundled photo) and the embedded ImageNet VGG16, at 224 px.

The boxes are those of benchmarks/attribution_pictures.py, which makes the README
pictures (docs/attribution.md, "Pictures"): drawn by eye on the 451 x 300 photo,
``FACE`` around both eyes, the nose and the mouth, ``EYES`` and ``MUZZLE`` its upper and
lower parts. A map's mass in a box is compared with the box's share of the image, which a
map spread evenly would give. The maps go the user's way, through image files and a maps
file (jaxvis/attribution/command.py), and are read back with ``open_maps``, so a layout
bug anywhere on that path (height and width swapped, a map flipped, maps in the wrong
rows, the wrong channel read) moves mass out of the boxes. Measured values (2026-12-02)
are in the comments; the bounds leave a margin below them.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from jaxvis.attribution import command
from jaxvis.attribution.images import load_image
from jaxvis.attribution.maps_file import open_maps

SIZE = 224
LAYER = "block5_conv3"
PHOTO = (451, 300)  # chelsea's (width, height)
FACE = (125, 70, 355, 290)  # (x0, y0, x1, y1) px of the photo
EYES = (125, 70, 355, 170)
MUZZLE = (125, 190, 355, 290)
# The channels benchmarks/attribution_pictures.py's rule picks, pinned below.
FACE_CHANNEL, EYE_CHANNEL, MUZZLE_CHANNEL = 458, 144, 132


def box_mask(shape, box) -> np.ndarray:
    """bool [h, w]: cells of an [h, w] grid over the photo whose centres lie in ``box``."""
    h, w = shape
    x0, y0, x1, y1 = np.array(box, float) / np.array(PHOTO * 2, float)
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def in_box(m: np.ndarray, box) -> float:
    """Fraction of ``|m|`` [h, w] inside ``box``."""
    m = np.abs(np.asarray(m, np.float64))
    return float(m[box_mask(m.shape, box)].sum() / m.sum())


def share(box) -> float:
    return float(box_mask((SIZE, SIZE), box).mean())


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(skdata.chelsea()).save(path)
    return str(path)


@pytest.fixture(scope="module")
def maps(imagenet_vgg, chelsea, tmp_path_factory) -> dict:
    """``{(method, channel): map [224, 224]}``, each written to and read from a maps file."""
    out, found = tmp_path_factory.mktemp("maps"), {}
    runs = [("gradcam", k, {}) for k in (FACE_CHANNEL, EYE_CHANNEL, MUZZLE_CHANNEL)]
    runs.append(("smoothgrad", FACE_CHANNEL, {"samples": 8}))
    for method, k, options in runs:
        path = str(out / f"{method}_{k}.h5")
        target = f"channel:{LAYER}:{k}"
        command.attribute_files(
            imagenet_vgg, [chelsea], method=method, target=target, out=path, size=SIZE,
            options=options, progress=False,
        )  # fmt: skip
        with open_maps(path) as f:
            assert f.targets == [target] and f.done.tolist() == [1]
            found[method, k] = f.map(0)
    return found


def test_the_rule_picks_the_face_eye_and_muzzle_channels(imagenet_vgg, chelsea):
    """Of the 51 channels (10%) with the most activation, the largest share in each box."""
    x = load_image(chelsea, SIZE)[None]
    acts = np.asarray(imagenet_vgg.features(x, LAYER)[LAYER])[0]  # [14, 14, 512]
    mass = acts.sum(axis=(0, 1))
    active = np.argsort(-mass)[:51]
    picked = []
    for box in (FACE, EYES, MUZZLE):
        inside = acts[box_mask(acts.shape[:2], box)].sum(axis=0) / mass.clip(1e-12)
        picked.append(int(active[np.argmax(inside[active])]))
    assert picked == [FACE_CHANNEL, EYE_CHANNEL, MUZZLE_CHANNEL]
    face = acts[..., FACE_CHANNEL]
    assert in_box(face, FACE) > 0.8 > 2 * box_mask(face.shape, FACE).mean()  # 0.85; 0.39


def test_face_channel_maps_sit_on_the_face(maps):
    assert share(FACE) == pytest.approx(0.375, abs=0.01)
    assert in_box(maps["gradcam", FACE_CHANNEL], FACE) > 0.68  # 0.72
    assert in_box(maps["smoothgrad", FACE_CHANNEL], FACE) > 0.48  # 0.53 with 8 samples


def test_eye_and_muzzle_channels_are_told_apart(maps):
    """Grad-CAM of the eye channel lies on the eyes, of the muzzle channel on the muzzle
    (each box is 0.17 of the image). A map flipped upside down or transposed swaps or
    spreads them (flipped: 0.34 and 0.05; transposed: 0.28 and 0.17)."""
    assert share(EYES) == share(MUZZLE) == pytest.approx(0.17, abs=0.01)
    eyes, muzzle = maps["gradcam", EYE_CHANNEL], maps["gradcam", MUZZLE_CHANNEL]
    assert in_box(eyes, EYES) > 0.5 and in_box(eyes, MUZZLE) < 0.25  # 0.62, 0.15
    assert in_box(muzzle, MUZZLE) > 0.6 and in_box(muzzle, EYES) < 0.15  # 0.74, 0.06
