"""On the real ImageNet weights, the image made for filter f excites f more than the
images made for the other filters do."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxvis

LAYER = "block3_conv2"
FILTERS = list(range(0, 64, 8))  # 8 filters spread over the layer


# "winograd": every 3x3 conv by Winograd F(2,3) (jaxvis/conv_tune.py), which "auto" picks
# for many shapes on an AVX2 CPU; its pictures differ from lax.conv's by rounding only.
@pytest.mark.parametrize("convs", ["lax", "winograd"])
def test_selectivity_block3_conv2(imagenet_vgg, convs):
    res = jaxvis.visualize(imagenet_vgg, LAYER, FILTERS, size=64, steps=48, convs=convs)
    images = jnp.asarray(res.images, jnp.float32) / 255.0
    acts = imagenet_vgg.features(images, LAYER)[LAYER + ":pre"].mean(axis=(1, 2))
    # a[i, j]: mean pre-ReLU response of filter FILTERS[j] to the image made for FILTERS[i].
    a = np.asarray(acts)[:, FILTERS]
    wins = [a[j, j] > np.delete(a[:, j], j).max() for j in range(len(FILTERS))]
    others = np.array([np.delete(a[:, j], j).max() for j in range(len(FILTERS))])
    print(
        f"selectivity {LAYER} ({convs}): {sum(wins)}/{len(wins)} filters win; own image",
        np.round(np.diag(a), 2),
        "best other image",
        np.round(others, 2),
    )
    assert sum(wins) >= len(FILTERS) - 1
