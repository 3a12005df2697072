"""Do jaxvis's defaults suit a model other than VGG16? A small trained Keras CNN.

Lucid's transforms are in pixels, tuned for 224 px ImageNet nets. This script trains a
small Keras CNN, offline, on synthetic images whose class is the orientation of a colour
grating (0, 45, 90 or 135 degrees, random frequency, phase, colours and noise), wraps it
with ``jaxvis.from_keras`` and visualizes 16 filters of each conv layer with the default
``lucid`` preset at 64 and 128 px. It reports selectivity: the fraction of filters whose
own picture activates them more than the other 15 pictures do.
For the head, a unit is a class logit.

    KERAS_BACKEND=jax python -m benchmarks.small_cnn_defaults [--tiny] [--grid DIR]
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
from PIL import Image

from benchmarks import options, report

CLASSES = 4  # grating orientations: 0, 45, 90, 135 degrees
TRAIN_SIZE = 64


def gratings(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(images float32 [n, size, size, 3] in [0, 1], labels int [n])``."""
    labels = rng.integers(0, CLASSES, n)
    theta = labels * np.pi / CLASSES + rng.normal(0, 0.08, n)
    freq = rng.uniform(0.08, 0.25, n) * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    along = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy
    wave = 0.5 + 0.5 * np.sin(freq[:, None, None] * along + phase[:, None, None])
    a, b = rng.uniform(0, 1, (n, 1, 1, 3)), rng.uniform(0, 1, (n, 1, 1, 3))
    images = a + (b - a) * wave[..., None] + rng.normal(0, 0.05, (n, size, size, 3))
    return np.clip(images, 0, 1).astype(np.float32), labels


def build_and_train(samples: int, epochs: int, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    x = inputs = keras.Input((None, None, 3))
    x = L.Conv2D(16, 5, padding="same", activation="relu", name="conv1")(x)
    x = L.MaxPooling2D(name="pool1")(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(name="pool2")(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(CLASSES, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="gratings_cnn")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    images, labels = gratings(samples, TRAIN_SIZE, np.random.default_rng(seed))
    model.fit(images, labels, epochs=epochs, batch_size=64, verbose=0)
    test, test_labels = gratings(512, TRAIN_SIZE, np.random.default_rng(seed + 1))
    accuracy = float((model.predict(test, verbose=0).argmax(-1) == test_labels).mean())
    return model, accuracy


def selectivity(model, layer: str, filters, images: np.ndarray) -> float:
    """Fraction of ``filters`` whose own image beats the others on their mean response."""
    acts = model.features(images.astype(np.float32) / 255.0, layer)
    read = layer + ":pre" if model.layer(layer).pre else layer
    a = np.asarray(acts[read]).reshape(len(images), -1, acts[read].shape[-1]).mean(axis=1)
    a = a[:, filters]
    others = np.array([np.delete(a[:, j], j).max() for j in range(len(filters))])
    return float(np.mean(np.diag(a) > others))


def main() -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--grid", help="also write each run's contact sheet into this folder")
    args = p.parse_args()
    import jaxvis

    mode = options.mode(args)
    samples, epochs, steps, sizes = {
        "tiny": (256, 1, 4, (32,)),
        "quick": (4096, 4, 128, (64,)),
        "full": (8192, 6, 512, (64, 128)),
    }[mode]
    t0 = time.perf_counter()
    keras_model, accuracy = build_and_train(samples, epochs, seed=0)
    train_s = time.perf_counter() - t0
    model = jaxvis.from_keras(keras_model)
    rows = []
    for size in sizes:
        for layer in ("conv1", "conv2", "conv3", "head"):
            count = model.num_filters(layer)
            filters = list(range(0, count, max(1, count // 16)))[:16]
            t = time.perf_counter()
            res = jaxvis.visualize(model, layer, filters, size=size, steps=steps)
            row = {"size": size, "layer": layer, "filters": len(filters), "steps": steps}
            row["selective"] = selectivity(model, layer, filters, res.images)
            row["seconds"] = time.perf_counter() - t
            rows.append(row)
            if args.grid:
                os.makedirs(args.grid, exist_ok=True)
                strip = np.concatenate(list(res.images[:8]), axis=1)
                path = os.path.join(args.grid, f"gratings_{layer}_{size}px.png")
                Image.fromarray(strip).save(path)
    report.print_table(rows, f"Small Keras CNN (test accuracy {accuracy:.3f}), lucid defaults")
    payload = {"mode": mode, "accuracy": accuracy, "train_s": train_s, "rows": rows}
    if not args.no_save:
        name = options.result_name("small_cnn_defaults", args)
        print("wrote", report.write_results(name, payload, args.out_dir))


if __name__ == "__main__":
    main()
