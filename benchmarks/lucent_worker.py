"""Lucent's side of benchmarks/side_by_side.py: timed ``render_vis`` calls on request.

Runs under an interpreter that has Lucent (torch-lucent 0.1.8, torch, torchvision and
kornia; benchmarks/peers.md gives the install), never under the project's own. It builds
the matched work once, then answers each line ``run`` on stdin with one JSON line on
stdout: the wall seconds of one whole ``render_vis`` call. A persistent worker lets the
driver interleave Lucent's calls with jaxvis's in one sitting; startup, imports and the
warm-up call are not timed.

The matched work (the same work jaxvis does in side_by_side.py):

* torchvision ``vgg16(weights=None)`` (weights do not change the speed), truncated
  after the target conv (``features[:idx + 1]``), its weights frozen
  (``requires_grad_(False)``), so that no weight gradients are computed;
* the target conv's own output (pre-ReLU): the ReLU after it is made non-inplace, so the
  hook sees the conv output, as jaxvis's lucid preset reads ``":pre"``;
* one ``render_vis`` call for all filters: ``param.image(size, batch=N)`` (FFT,
  decorrelated colour) and objective ``sum_i channel(layer, f_i, batch=i)``;
* Lucent's defaults otherwise: ``standard_transforms``, Adam 0.05, ImageNet
  normalization, and ``fixed_image_size=size`` (no upsampling to 224 px).

    python benchmarks/lucent_worker.py --size 128 --steps 64 --filters 0,1,2,3 \
        --layer features_17
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import OrderedDict


def _kornia_aliases() -> list[str]:
    """kornia 0.6 moved two functions that lucent.optvis.transform calls from the top
    level to ``kornia.geometry.transform``; point the old names at the new ones."""
    import kornia
    import kornia.geometry.transform as geometry

    added = []
    for name in ("get_rotation_matrix2d", "warp_affine"):
        if not hasattr(kornia, name):
            setattr(kornia, name, getattr(geometry, name))
            added.append(name)
    return added


def build(layer: str, size: int):
    """The truncated, frozen VGG16 and the index of its target conv."""
    import torch
    import torchvision

    if not layer.startswith("features_"):
        sys.exit(f"lucent_worker: layer must be features_<index>; got {layer!r}")
    idx = int(layer.split("_", 1)[1])
    net = torchvision.models.vgg16(weights=None)
    target = net.features[idx]
    if not isinstance(target, torch.nn.Conv2d):
        sys.exit(f"lucent_worker: features[{idx}] is {type(target).__name__}, not a conv")
    after = net.features[idx + 1] if idx + 1 < len(net.features) else None
    if isinstance(after, torch.nn.ReLU):
        after.inplace = False  # an inplace ReLU would overwrite the hooked conv output
    model = torch.nn.Sequential(OrderedDict([("features", net.features[: idx + 1])])).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--filters", default="0,1,2,3", help="comma-separated channels")
    p.add_argument("--layer", default="features_17", help="torchvision name (block4_conv1)")
    p.add_argument("--warmup-steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import numpy as np
    import torch
    import torchvision

    shims = _kornia_aliases()
    from lucent.optvis import objectives, param, render

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    filters = [int(f) for f in args.filters.split(",")]
    model = build(args.layer, args.size)

    def call(steps: int) -> float:
        objective = objectives.channel(args.layer, filters[0], batch=0)
        for b, f in enumerate(filters[1:], start=1):
            objective = objective + objectives.channel(args.layer, f, batch=b)
        start = time.perf_counter()
        render.render_vis(
            model,
            objective,
            param_f=lambda: param.image(args.size, batch=len(filters)),
            thresholds=(steps,),
            show_image=False,
            progress=False,
            fixed_image_size=args.size,
        )
        seconds = time.perf_counter() - start
        for m in model.modules():  # render_vis adds hooks on every call, never removes them
            m._forward_hooks.clear()
        return seconds

    call(args.warmup_steps)
    hello = {
        "ready": True,
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lucent": _version("torch-lucent"),
            "python": platform.python_version(),
        },
        "torch_threads": torch.get_num_threads(),
        "kornia_aliases": shims,
        "pid": os.getpid(),
    }
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(json.dumps({"seconds": call(args.steps)}), flush=True)


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
