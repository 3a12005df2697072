"""Every benchmark runs end to end in ``--tiny`` mode and writes a well-formed JSON result.

Each runs as users run it (``python -m benchmarks.<name>`` from the repository root), in a
subprocess on the CPU, writing into a temporary directory so that benchmarks/results/
only ever holds real measurements. The numbers are not checked: at 32 px and 2 steps
they mean nothing; what is checked is that the code runs and records what it claims to.

Throughput and chunk_sweep time the keras-vis preset in tiny mode, sequential runs
``jaxvis.visualize`` with its default (lucid), so both presets are exercised. The three
share a persistent XLA compilation cache in a temporary directory. Most of a
tiny run is compiling, and the benchmarks compile some identical programs (the same
block in throughput and chunk_sweep; the same program for each variant of sequential),
so this keeps the file quick without changing which code runs.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory):
    """The environment of a benchmark subprocess: CPU only, repo importable, shared cache."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla-cache"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


def run_tiny(name: str, out_dir: Path, env: dict) -> dict:
    """Runs ``benchmarks.<name> --tiny`` into ``out_dir``; returns its one JSON result."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--tiny", "--out-dir", str(out_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    files = list(out_dir.glob(f"{name}-tiny-*.json"))
    assert len(files) == 1, f"expected one {name}-tiny-*.json in {out_dir}, got {files}"
    assert str(files[0]) in proc.stdout  # the path it says it wrote
    payload = json.loads(files[0].read_text())
    check_environment(payload)
    assert payload["mode"] == "tiny"
    return payload


def check_environment(payload: dict) -> None:
    env = payload["environment"]
    for key in ("platform", "jax", "jaxlib", "date", "cpu_model", "cpu_count", "load_average"):
        assert key in env, key
    if os.path.exists("/proc/cpuinfo") and platform.machine() == "x86_64":
        assert env["cpu_id"].startswith("family "), env["cpu_id"]  # the model name is not enough
    assert env["platform"] == "cpu"
    assert set(env["cpu_speed_flags"]) == {"avx2", "fma", "avx512f"}
    assert all(isinstance(v, bool) for v in env["cpu_speed_flags"].values())


def test_throughput_tiny(tmp_path, bench_env):
    payload = run_tiny("throughput", tmp_path, bench_env)
    rows = payload["rows"]
    variants = {r["variant"] for r in rows}
    assert payload["preset"] == "keras-vis"  # tiny's default: the quickest to compile
    assert {"keras-vis", "no transforms", "pixel param, no transforms"} <= variants
    assert {"model fwd+input-grad only", "transforms only (fwd+grad)"} <= variants
    for r in rows:
        assert r["size"] == 32 and r["k"] == 2
        assert r["filter_steps_per_s"] > 0 and r["timed_calls"] >= 1
    main = next(r for r in rows if r["variant"] == "keras-vis")
    assert main["executed_flops_per_filter_step"] > 0
    for name in ("matmul", "conv_fwd", "conv_input_grad"):
        assert payload["ceilings"][name]["flops_per_s_median"] > 0
        assert payload["ceilings"][name]["n"] == 1
    assert payload["projection"]["total_hours_by_flops"] > 0
    assert len(payload["projection"]["rows"]) == 13


def test_chunk_sweep_tiny(tmp_path, bench_env):
    payload = run_tiny("chunk_sweep", tmp_path, bench_env)
    assert [r["k"] for r in payload["k_sweep"]] == [1, 2]
    assert [r["chunk"] for r in payload["chunk_sweep"]] == [1, 2]
    for r in payload["k_sweep"] + payload["chunk_sweep"]:
        assert r["filter_steps_per_s"] > 0 and r["layer_wall_s"] > 0
    scan = payload["scan_vs_blocks"]
    assert len(scan) == 2 and all(r["filter_steps_per_s"] > 0 for r in scan)
    assert payload["conclusions"]


def test_chunk_choice_tiny(tmp_path, bench_env):
    payload = run_tiny("chunk_choice", tmp_path, bench_env)
    rows = payload["rows"]
    assert [r["chunk"] for r in rows] == [1, 2, 4]
    assert sum(r["chosen"] for r in rows) == 1 and all(r["filter_steps_per_s"] > 0 for r in rows)


def test_side_by_side_maps_layers_and_needs_lucent(tmp_path):
    from benchmarks import side_by_side

    names = [side_by_side.torchvision_name(la) for la in ("block1_conv1", "block4_conv1")]
    assert names == ["features_0", "features_17"]  # torchvision vgg16.features indices
    assert side_by_side.torchvision_name("block5_conv3") == "features_28"
    with pytest.raises(SystemExit, match="no Lucent interpreter"):
        side_by_side.main(["--lucent-python", str(tmp_path / "none"), "--no-save"])


@pytest.mark.parametrize(
    "flag, named",
    [
        ("--convs=bogus", "valid: auto, lax"),
        ("--cpu-devices=1,0", "'auto' or a whole number"),
        ("--batches=x", "'auto' or whole numbers"),
    ],
)
def test_side_by_side_bad_setting_is_one_line_and_exit_2(tmp_path, capsys, flag, named):
    from benchmarks import side_by_side

    with pytest.raises(SystemExit) as ended:
        side_by_side.main(["--lucent-python", str(tmp_path / "none"), flag, "--no-save"])
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and err[0].startswith("side_by_side: ")


def test_jaxvis_worker_times_calls_on_its_own_devices(bench_env, monkeypatch):
    """side_by_side's jaxvis side: a worker with JAX_NUM_CPU_DEVICES=2 reports two
    devices, answers ``run`` with the seconds of a call, and exits on end of input."""
    from benchmarks import side_by_side

    class Args:
        layer, size, steps, filters, dtype = "block1_conv1", 32, 2, "0,1", "float32"

    for key, value in bench_env.items():  # the worker's environment starts from ours
        monkeypatch.setenv(key, value)
    worker = side_by_side.jaxvis_worker(Args, "auto", "lax", 2)
    try:
        assert worker.hello["ready"] and worker.hello["devices"] == 2
        assert worker.call() > 0
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def test_sequential_tiny(tmp_path, bench_env):
    payload = run_tiny("sequential", tmp_path, bench_env)
    rows = payload["rows"]
    assert len(rows) == 4
    for r in rows:
        assert r["steps"] == 2
        assert r["cold_wall_s"] > 0 and r["steady_filter_steps_per_s"] > 0
    assert payload["peers"] is None  # tiny settings are not the peers' settings


def test_compile_cache_tiny(tmp_path, bench_env):
    payload = run_tiny("compile_cache", tmp_path, bench_env)
    first, repeat = payload["runs"]
    assert (first["run"], repeat["run"]) == ("first", "repeat")
    # The first run compiles every program; the repeat loads every one of them, the small
    # init and finish programs too (the CLI caches programs of any compile time).
    assert first["cache_hits"] == 0 and first["cache_misses"] > 0
    assert repeat["cache_misses"] == 0
    assert repeat["cache_hits"] == repeat["compile_requests_use_cache"] == first["cache_misses"]
    assert [r["what"] for r in payload["rows"]] == [
        "block1_conv1, compile",
        "whole run, compile",
        "whole run, wall",
    ]


def test_snapshots_tiny(tmp_path, bench_env):
    payload = run_tiny("snapshots", tmp_path, bench_env)
    rows = payload["rows"]
    assert [r["every"] for r in rows] == [0, 16, 64]
    assert [r["snapshots_per_filter"] for r in rows][0] == 0
    for r in rows:
        assert r["filter_steps_per_s"] > 0 and r["atlas_bytes"] > 0
    # Snapshots cost disk: an atlas with them is larger than one without.
    assert rows[1]["atlas_bytes"] > rows[0]["atlas_bytes"]


def test_keras_adapter_tiny(tmp_path, bench_env):
    pytest.importorskip("keras")
    payload = run_tiny("keras_adapter", tmp_path, {**bench_env, "KERAS_BACKEND": "jax"})
    rows = {r["variant"]: r for r in payload["rows"]}
    assert set(rows) == {"jaxvis.vgg16", "from_keras(keras VGG16)"}
    assert payload["preset"] == "keras-vis" and payload["steps"] == 2
    for r in rows.values():
        assert r["filter_steps_per_s"] > 0 and r["n"] >= 1 and r["cold_s"] > 0
    ours, theirs = (r["xla_flops_per_filter_step"] for r in rows.values())
    assert ours > 0 and abs(theirs / ours - 1) < 0.01  # the same network, the same work
    assert payload["keras_over_jaxvis"] > 0
    assert payload["agreement"]["max_pixel_diff_uint8"] <= 1  # same weights, same pictures


def test_site_tiny(tmp_path, bench_env):
    payload = run_tiny("site", tmp_path, bench_env)
    assert payload["units"] > 0 and payload["site_bytes"] > 0 and payload["site_files"] > 0
    assert payload["builds"] and all(b["seconds"] > 0 for b in payload["builds"]), payload


def test_attribution_tiny(tmp_path, bench_env):
    payload = run_tiny("attribution", tmp_path, bench_env)
    methods = (
        "gradient",
        "smoothgrad",
        "integrated_gradients",
        "gradcam",
        "gradcam++",
        "scorecam",
        "guided_backprop",
        "guided_gradcam",
    )
    assert payload["size"] == 32 and payload["images"] == 2 and payload["weights"] == "random"
    assert payload["methods"] == list(methods)
    rows = payload["rows"]
    assert [(r["method"], r["variant"]) for r in rows] == [
        (m, v) for m in methods for v in ("batched, batch=2", "per image")
    ]
    for r in rows:
        assert r["images"] == 2 and r["size"] == 32
        assert r["images_per_s"] > 0 and r["steady_wall_s"] > 0 and r["cold_wall_s"] > 0
        assert r["fwd_flops_per_image"] > 0 and r["xla_flops_per_image"] > 0
        assert r["analytic_flops_per_image"] == r["fwd_flops_per_image"] * r["passes"]
    by = {r["method"]: r for r in rows}
    assert by["gradient"]["passes"] == 2 and by["smoothgrad"]["passes"] == 2 * 2  # 2 samples
    assert by["integrated_gradients"]["passes"] == 2 * 2  # 2 steps
    assert by["gradcam"]["layer"] == "block2_conv1"  # the last map before block2_conv2
    # Score-CAM: one forward per channel of its layer (128 in block2_conv1) plus two.
    assert by["scorecam"]["passes"] == 128 + 2 and by["scorecam"]["loops"] is True


def test_attribution_sanity_tiny(tmp_path, bench_env):
    payload = run_tiny("attribution_sanity", tmp_path, bench_env)
    assert payload["size"] == 32 and payload["blocks"] == [5, 4]
    assert payload["weights"] == "imagenet"  # the check needs trained weights
    photos = ["chelsea", "coffee", "astronaut"]
    assert payload["photos"] == photos
    rows = payload["rows"]
    assert [(r["method"], r["randomized"]) for r in rows] == [
        (m, b) for b in ("block5", "block5+block4") for m in ("gradient", "smoothgrad", "gradcam")
    ]
    for r in rows:
        values = [v for v in r["spearman"].values() if v is not None]
        assert set(r["spearman"]) == set(photos) and all(-1.0 <= v <= 1.0 for v in values)


def test_a_second_result_of_the_day_does_not_overwrite_the_first(tmp_path):
    from benchmarks import report

    first = report.write_results("demo", {"run": 1}, str(tmp_path))
    second = report.write_results("demo", {"run": 2}, str(tmp_path))
    assert second == first[: -len(".json")] + "-2.json"
    assert json.loads(Path(first).read_text())["run"] == 1
    assert json.loads(Path(second).read_text())["run"] == 2
    # A benchmark that saves after each part rewrites its own file, and only that one.
    assert report.write_results("demo", {"run": 3}, str(tmp_path), replace=second) == second
    assert json.loads(Path(second).read_text())["run"] == 3
    assert len(list(tmp_path.glob("demo-*.json"))) == 2


def test_isa_cap_tiny(tmp_path, bench_env):
    payload = run_tiny("isa_cap", tmp_path, bench_env)
    capped = [r for r in payload["runs"] if r["variant"] == "capped at AVX2"]
    uncapped = [r for r in payload["runs"] if r["variant"] == "uncapped"]
    assert len(capped) == len(uncapped) == 1
    # The cap reached the child's XLA (and only that child's).
    assert capped[0]["xla_flags"].endswith("--xla_cpu_max_isa=AVX2")
    assert "max_isa" not in uncapped[0]["xla_flags"]
    for row in payload["rows"]:
        assert row["capped / uncapped"] > 0
