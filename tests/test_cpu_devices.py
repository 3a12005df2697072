"""CPU devices for ``jaxvis atlas`` (jaxvis/cpu_devices.py).

The count rule and its checks; bad values as one line and exit 2 before any file; and
end to end, a default ``jaxvis atlas`` in a fresh process that asks for two CPU devices
on a 2-core machine, shards each chunk over them with a rewritten conv, and gives the
pictures of the same run on one device.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import jaxvis
from jaxvis import cpu_devices
from jaxvis.atlas import open_atlas
from jaxvis.errors import JaxvisError

JAXVIS = [sys.executable, "-m", "jaxvis.cli"]


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "²", ""])
def test_bad_counts_are_refused(value):
    with pytest.raises(JaxvisError, match="'auto' or a whole number >= 1"):
        cpu_devices.check(value)


def test_count_rule(monkeypatch):
    monkeypatch.setattr(cpu_devices, "cores", lambda: 16)
    assert cpu_devices.count("auto", distributed=False) == 2
    assert cpu_devices.count("auto", distributed=True) == 1
    assert cpu_devices.count("3", distributed=True) == 3
    monkeypatch.setattr(cpu_devices, "cores", lambda: 1)
    assert cpu_devices.count("auto", distributed=False) == 1


def test_default_reads_its_variable(monkeypatch):
    monkeypatch.delenv(cpu_devices.ENV, raising=False)
    assert cpu_devices.default() == "auto"
    monkeypatch.setenv(cpu_devices.ENV, "1")
    assert cpu_devices.default() == "1"
    monkeypatch.setenv(cpu_devices.ENV, "many")
    with pytest.raises(JaxvisError, match=cpu_devices.ENV):
        cpu_devices.default()


def test_apply_leaves_started_backends_alone():
    import jax

    jax.devices()  # the backends are up in this process
    assert cpu_devices.apply("2") is None


@pytest.mark.parametrize("jax_env, want", [(None, (2, 2)), ("1", (None, 1))])
def test_apply_in_a_fresh_process_and_jax_own_variable_wins(jax_env, want):
    """Before jax starts, apply sets the count; JAX_NUM_CPU_DEVICES, if set, is kept."""
    env = {k: v for k, v in os.environ.items() if k != cpu_devices.JAX_ENV}
    if jax_env:
        env[cpu_devices.JAX_ENV] = jax_env
    code = (
        "import jax; from jaxvis import cpu_devices; n = cpu_devices.apply('2'); "
        "print(n, jax.device_count())"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert run.stdout.split() == [str(w) for w in want]


@pytest.mark.parametrize(
    "flag, env, named",
    [(["--cpu-devices", "0"], {}, "--cpu-devices"), ([], {"JAXVIS_CPU_DEVICES": "x"}, "JAXVIS")],
)
def test_bad_count_is_one_line_and_exit_2(tmp_path, flag, env, named):
    out = tmp_path / "a.h5"
    argv = [*JAXVIS, "atlas", "--layers", "block1_conv1", "--filters", "0", "--size", "32"]
    run = subprocess.run(
        [*argv, "--steps", "2", "--weights", "random", "--out", str(out), *flag],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in run.stderr
    assert not out.exists()


def test_default_atlas_uses_two_cpu_devices_and_keeps_the_pictures(tmp_path):
    """The default asks for min(2, cores) devices; each chunk of 2 units is sharded over
    them, through the F(2,3) rewrite of every conv, and the pictures are those of one
    device (up to the rounding of another program: a wrong unit or key moves the mean
    pixel by 20 or more)."""
    out = tmp_path / "two.h5"
    env = {k: v for k, v in os.environ.items() if k not in (cpu_devices.ENV, cpu_devices.JAX_ENV)}
    argv = [*JAXVIS, "atlas", "--layers", "block1_conv2", "--filters", "0-3", "--size", "32"]
    argv += ["--steps", "4", "--weights", "random", "--convs", "winograd", "--no-progress"]
    subprocess.run([*argv, "--out", str(out)], env=env, check=True, timeout=300)
    n = min(2, cpu_devices.cores())
    with open_atlas(out) as atlas:
        assert atlas.provenance["device_kinds"] == [f"cpu:cpu x{n}"]
        view = atlas["block1_conv2"]
        order = np.argsort(view.filters)
        images = np.asarray(view.images[:])[order]
    single = jaxvis.visualize(
        jaxvis.vgg16(None), "block1_conv2", range(4), size=32, steps=4, convs="winograd"
    )
    diff = np.abs(images.astype(int) - single.images.astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 8
