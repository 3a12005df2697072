"""The jaxvis command: output, one-line errors with exit 2, and a real run end to end."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from chunks import make_chunk

from jaxvis import cli
from jaxvis.atlas import AtlasWriter, open_atlas
from jaxvis.errors import JaxvisError

JAXVIS = [sys.executable, "-m", "jaxvis.cli"]
TINY = [
    "--weights",
    "random",
    "--layers",
    "block1_conv1",
    "--filters",
    "0-3",
    "--size",
    "32",
    "--steps",
    "4",
    "--batch",
    "1",
]


def one_filter_atlas(path):
    """A minimal valid atlas: layer "c", filter 0, a 4x4 black image."""
    prov = {"model": "vgg16", "weights": {}, "config": {}, "device_kind": "cpu"}
    with AtlasWriter(path, provenance=prov) as w:
        w.write_chunk(
            "c",
            make_chunk("c", [0], np.zeros((1, 4, 4, 3), np.uint8), [0], [[0]], seconds=0),
            num_filters_in_layer=1,
        )
    return path


def run_main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, match):
    assert code == 2
    assert err.startswith("jaxvis: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert match in err, err


def test_layers_table(capsys):
    code, out, _ = run_main(capsys, "layers", "--weights", "random")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["name", "kind", "filters", "output", "at", "224", "px"]
    assert lines[1].split() == [
        "block1_conv1",
        "conv",
        "64",
        "224x224x64",
        "(also",
        "block1_conv1:pre)",
    ]
    assert lines[-1].split() == ["block5_pool", "pool", "512", "7x7x512"]
    assert len(lines) == 1 + 18


def test_layers_at_a_size_and_bad_models(capsys):
    code, out, _ = run_main(capsys, "layers", "--weights", "random", "--size", "64")
    assert code == 0 and out.splitlines()[-1].split()[-1] == "2x2x512"
    for argv, says in (
        (["--model", "resnet"], "unknown model 'resnet'; valid: vgg16, alexnet"),
        (["--model", "m.h5"], "must be Keras 3 .keras files"),
        (["--model", "missing.keras"], "no such model file: missing.keras"),
        (["--preprocess", "caffe"], "--preprocess is for .keras files"),
        (["--size", "8"], "size must be an integer >= 32"),
    ):
        code, _, err = run_main(capsys, "layers", *argv)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture
def foreign(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    return path


@pytest.mark.parametrize(
    "argv, match",
    [
        (
            ["atlas", *TINY[:2], "--layers", "block9_conv1", "--out", "x.h5"],
            "unknown layer 'block9_conv1' for vgg16; valid layers: all-conv, block1_conv1",
        ),
        (
            ["atlas", *TINY[:2], "--layers", "block1_conv1", "--filters", "5-2", "--out", "x.h5"],
            "runs backwards",
        ),
        (
            ["atlas", *TINY[:2], "--layers", "block1_conv1", "--filters", "0-64", "--out", "x.h5"],
            "layer 'block1_conv1' has 64 filters",
        ),
        (["atlas", *TINY, "--out", "{tmp}/no/such/dir/x.h5"], "does not exist"),
        (["atlas", *TINY, "--preset", "dream", "--out", "{tmp}/x.h5"], "valid presets"),
        (["info", "{tmp}/missing.h5"], "no such atlas file"),
        (["export", "{tmp}/missing.h5", "--out", "{tmp}/d"], "no such atlas file"),
        (["info", "{foreign}"], "not a jaxvis atlas"),
        (["export", "{foreign}", "--out", "{tmp}/d"], "not a jaxvis atlas"),
    ],
)
def test_errors_are_one_line(capsys, tmp_path, foreign, argv, match):
    before = foreign.read_bytes()
    argv = [a.format(tmp=tmp_path, foreign=foreign) for a in argv]
    code, out, err = run_main(capsys, *argv)
    assert_one_line_error(code, err, match)
    assert foreign.read_bytes() == before


def test_atlas_refuses_foreign_out_even_with_overwrite(capsys, foreign):
    before = foreign.read_bytes(), os.stat(foreign).st_mtime_ns
    code, _, err = run_main(capsys, "atlas", *TINY, "--overwrite", "--out", str(foreign))
    assert_one_line_error(code, err, "not a jaxvis atlas")
    assert (foreign.read_bytes(), os.stat(foreign).st_mtime_ns) == before


def test_export_unwritable_out(capsys, tmp_path):
    path = one_filter_atlas(tmp_path / "a.h5")
    (tmp_path / "file").write_text("")
    code, _, err = run_main(capsys, "export", str(path), "--out", str(tmp_path / "file" / "d"))
    assert_one_line_error(code, err, "cannot create output directory")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["atlas", "--layers", "block1_conv1"])  # no --out
    assert e.value.code == 2
    assert "required" in capsys.readouterr().err


def test_interrupt_and_oserror_are_one_line(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_info", interrupted)
    code, _, err = run_main(capsys, "info", "x.h5")
    assert_one_line_error(code, err, "interrupted; re-run the same command to resume")

    def disk_full(args):
        raise OSError(28, "No space left on device", "x.h5.tmp")

    monkeypatch.setattr(cli, "cmd_info", disk_full)
    code, _, err = run_main(capsys, "info", "x.h5")
    assert_one_line_error(code, err, "x.h5.tmp: No space left on device")


def test_weights_fetch_calls_library(capsys, monkeypatch):
    import jaxvis.models.fetch as fetch_mod

    calls = []
    monkeypatch.setattr(
        fetch_mod, "fetch", lambda which, **kw: calls.append((which, kw)) or "/cache/w.h5"
    )
    code, out, _ = run_main(capsys, "weights", "fetch", "top", "--cache-dir", "/c")
    assert code == 0 and out == "/cache/w.h5\n"
    assert calls == [("top", {"cache_dir": "/c", "progress": True})]

    def offline(which, **kw):
        raise JaxvisError("cannot download vgg16 weights: network unreachable")

    monkeypatch.setattr(fetch_mod, "fetch", offline)
    code, _, err = run_main(capsys, "weights", "fetch")
    assert_one_line_error(code, err, "network unreachable")


# --- end to end (subprocesses that run jax) ---------------------------------------------


def _atlas_digest(path):
    with open_atlas(path) as atlas:
        if "block1_conv1" not in atlas:
            return [], ""
        v = atlas["block1_conv1"]
        order = np.argsort(v.filters)
        h = hashlib.sha256()
        for arr in (v.filters[order], v.images[:][order], v.objective[order], v.history[order]):
            h.update(np.ascontiguousarray(arr).tobytes())
        return v.filters.tolist(), h.hexdigest()


def test_end_to_end_then_kill_and_resume_equals_uninterrupted(tmp_path, capsys):
    # One chunk per filter and 32 filters, so a kill can land between chunks; the
    # persistent compilation cache spares the later runs the compile.
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }
    args = [
        "--weights",
        "random",
        "--layers",
        "block1_conv1",
        "--filters",
        "0-31",
        "--size",
        "32",
        "--batch",
        "1",
    ]
    ref = tmp_path / "x.h5"
    run = subprocess.run(
        [*JAXVIS, "atlas", *args, "--steps", "4", "--out", str(ref)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "done: 32/32 filters" in run.stderr and run.stdout.strip() == str(ref)

    run = subprocess.run(
        [*JAXVIS, "export", str(ref), "--out", "pics", "--grid"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert len(os.listdir(tmp_path / "pics")) == 33
    assert os.path.exists(tmp_path / "pics" / "block1_conv1_31.jpg")
    assert os.path.exists(tmp_path / "pics" / "block1_conv1_grid.jpg")

    run = subprocess.run([*JAXVIS, "info", str(ref)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "UNTRAINED" in run.stdout and "preset=lucid" in run.stdout
    assert any(line.split()[:2] == ["block1_conv1", "32/32"] for line in run.stdout.splitlines())

    # Kill a second run once it has written part of the atlas, then resume it.
    out = tmp_path / "killed.h5"
    cmd = [*JAXVIS, "atlas", *args, "--steps", "4", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(out) and len(_atlas_digest(out)[0]) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _atlas_digest(out)[0]
    assert 2 <= len(done_before) < 32, f"kill did not land mid-run: {done_before}"
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert _atlas_digest(out) == _atlas_digest(ref)

    # A different config is refused in one line, and the atlas is left as it was.
    before = out.read_bytes()
    code, _, err = run_main(capsys, "atlas", *args, "--steps", "5", "--out", str(out))
    assert_one_line_error(code, err, "config.steps: 4 in the file, 5 now")
    assert "--overwrite" in err and out.read_bytes() == before


def test_info_and_export_do_not_import_jax(tmp_path):
    path = one_filter_atlas(tmp_path / "a.h5")
    code = (
        f"import sys; from jaxvis.cli import main; "
        f"assert main(['info', {str(path)!r}]) == 0; "
        f"assert main(['export', {str(path)!r}, '--out', {str(tmp_path / 'o')!r}]) == 0; "
        f"assert 'jax' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_atlas_dtype_flag_reaches_the_model_and_the_config(tmp_path, capsys):
    out = str(tmp_path / "bf16.h5")
    tiny = ["--weights", "random", "--layers", "block1_conv1", "--filters", "0"]
    code, _, err = run_main(
        capsys,
        "atlas",
        *tiny,
        "--size",
        "32",
        "--steps",
        "2",
        "--dtype",
        "bfloat16",
        "--no-progress",
        "--out",
        out,
    )
    assert code == 0, err
    with open_atlas(out) as atlas:
        assert atlas.config["dtype"] == "bfloat16"
        assert list(atlas["block1_conv1"].filters) == [0]
    with pytest.raises(SystemExit):  # argparse: exit 2 with a usage line
        cli.main(["atlas", *tiny, "--dtype", "float16", "--out", out])


def test_atlas_keeps_compiled_programs_in_the_user_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    args = [*JAXVIS, "atlas", *TINY, "--preset", "keras-vis", "--no-progress"]
    run = subprocess.run([*args, "--out", str(tmp_path / "a.h5")], env=env, capture_output=True)
    assert run.returncode == 0, run.stderr
    assert os.listdir(tmp_path / "cache" / "jaxvis" / "xla")  # programs kept for next time
    off = subprocess.run(
        [*args, "--no-compile-cache", "--out", str(tmp_path / "b.h5")],
        env={**env, "XDG_CACHE_HOME": str(tmp_path / "other")},
        capture_output=True,
    )
    assert off.returncode == 0, off.stderr
    assert not os.path.exists(tmp_path / "other" / "jaxvis")
