"""Sanity check of attribution maps by cascading weight randomization (Adebayo et al. 2018).

A map that explains the model should change when the model's weights are replaced by
random ones. On the embedded ImageNet VGG16 weights, maps of real photos (scikit-image's
chelsea, coffee and astronaut) are computed for gradient, SmoothGrad and Grad-CAM, then
again with the top blocks' weights re-drawn from VGG16's own random initialisation,
cascading from the top: block5, then blocks 5 and 4, ... down to all five. Each row gives
the Spearman rank correlation between the original map and the randomized model's map
(the mean over the photos; each photo's in the JSON). A method that passes the check
falls towards 0 as more blocks are randomized; one that stays near 1 shows the image more
than the model (guided backpropagation is the known case).

The target of each photo is one channel of ``block5_conv3`` (pre-ReLU, so it never dies
when weights change): the channel with the largest mean activation on that photo under
the real weights. Grad-CAM reads the default layer for it, ``block5_conv2``.

    python -m benchmarks.attribution_sanity --tiny --out-dir /tmp   # seconds: does it run?
    python -m benchmarks.attribution_sanity --quick
    python -m benchmarks.attribution_sanity                         # 224 px
"""

from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks import env, options
from benchmarks.report import print_table, write_results

PHOTOS = ("chelsea", "coffee", "astronaut")
TARGET_LAYER = "block5_conv3"
MODES = {
    "tiny": {"size": 32, "blocks": [5, 4], "samples": 2, "photos": list(PHOTOS)},
    "quick": {"size": 96, "blocks": [5, 4, 3, 2, 1], "samples": 8, "photos": list(PHOTOS)},
    "full": {"size": 224, "blocks": [5, 4, 3, 2, 1], "samples": 25, "photos": list(PHOTOS)},
}
METHODS = {"gradient": {}, "smoothgrad": {"samples": None}, "gradcam": {}}


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of a flat array, ties given their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)
    return ((end - counts + end - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (NaN if either is constant)."""
    ra, rb = rank(np.ravel(a)), rank(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def photos(names, size: int) -> np.ndarray:
    """The scikit-image photos (bundled, no download), centre-cropped square and resized."""
    import skimage.data
    import skimage.transform

    out = []
    for name in names:
        img = getattr(skimage.data, name)()
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out.append(skimage.transform.resize(img, (size, size), anti_aliasing=True))
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


def randomized(model, random_params, blocks) -> object:
    """``model`` with the weights of ``blocks`` (e.g. [5, 4]) taken from ``random_params``."""
    prefixes = tuple(f"block{b}_" for b in blocks)
    params = {k: random_params[k] if k.startswith(prefixes) else v for k, v in model.params.items()}
    return dataclasses.replace(model, params=params)


def targets(model, images) -> list[str]:
    """Each photo's most active ``block5_conv3`` channel under the real weights."""
    acts = np.asarray(model.features(images, TARGET_LAYER)[TARGET_LAYER])
    return [f"channel:{TARGET_LAYER}:pre:{int(k)}" for k in acts.mean(axis=(1, 2)).argmax(-1)]


def maps(model, images, goals, mode: dict) -> dict[str, np.ndarray]:
    from jaxvis import attribution

    out = {}
    for method, opts in METHODS.items():
        kw = {k: mode[k] if v is None else v for k, v in opts.items()}
        out[method] = attribution.attribute(model, images, method=method, target=goals, **kw)
    return out


def run(args, mode: dict) -> None:
    import jaxvis

    print(env.describe_device())
    model = options.load_model(args.weights, args.dtype)
    random_params = jaxvis.vgg16(None, seed=1, dtype=options.DTYPES[args.dtype]).params
    images = photos(mode["photos"], mode["size"])
    goals = targets(model, images)
    print(f"{len(images)} photos @ {mode['size']} px, targets {goals}")
    original = maps(model, images, goals, mode)
    rows = []
    for depth in range(1, len(mode["blocks"]) + 1):
        blocks = mode["blocks"][:depth]
        changed = maps(randomized(model, random_params, blocks), images, goals, mode)
        for method, ref in original.items():
            rho = np.array([spearman(a, b) for a, b in zip(ref, changed[method], strict=True)])
            finite = rho[~np.isnan(rho)]
            rows.append(
                {
                    "method": method,
                    "randomized": "+".join(f"block{b}" for b in blocks),
                    "spearman_mean": float(finite.mean()) if finite.size else None,
                    "spearman": {k: _number(v) for k, v in zip(mode["photos"], rho, strict=True)},
                }
            )
        print_table([table_row(r) for r in rows[-len(original) :]])
    print_table([table_row(r) for r in rows], title="Spearman rank correlation with the original")
    payload = {"mode": options.mode(args), **mode, "targets": goals, "weights": args.weights}
    payload.update(dtype=args.dtype, rows=rows)
    if not args.no_save:
        name = options.result_name("attribution_sanity", args)
        print("wrote", write_results(name, payload, args.out_dir))


def _number(v) -> float | None:
    """A float for the JSON, None for NaN (a constant map, e.g. an all-zero Grad-CAM)."""
    return None if np.isnan(v) else float(v)


def table_row(r: dict) -> dict:
    row = {"method": r["method"], "randomized": r["randomized"], "mean": r["spearman_mean"]}
    return row | {k: v for k, v in r["spearman"].items()}


def main(argv=None) -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int)
    p.add_argument("--samples", type=int, help="SmoothGrad samples")
    args = p.parse_args(argv)
    if args.weights != "imagenet":
        p.error("the sanity check needs trained weights: --weights imagenet")
    mode = dict(MODES[options.mode(args)])
    for name in ("size", "samples"):
        if getattr(args, name) is not None:
            mode[name] = getattr(args, name)
    run(args, mode)


if __name__ == "__main__":
    main()
