"""benchmarks/device_check.sh: the accelerator check runs end to end, and refuses a CPU.

``--tiny`` runs every part of the check at toy sizes on the CPU, as the GPU run does at
full sizes (the same driver, benchmarks/device_check.py). The script is called from
another working directory with a relative ``--out``, as the device tool calls it. The
numbers are not checked against anything (32 px, 2 steps); what is checked is that each
section the GPU run reports is there with sane values, that the summary table is the last
thing printed (the device tool returns the end of the output), and that without
``--tiny`` a CPU-only machine gets a one-line error and exit status 2.

The runs share the session's persistent XLA compilation cache (tests/conftest.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "device_check.sh"
TIMEOUT_S = 300
SECTIONS = (
    "ceilings",
    "layers",
    "chunk_sweep",
    "block_steps",
    "compile_s",
    "peak_memory",
    "projection",
    "one_channel",
)
DTYPES = ("float32", "bfloat16")


@pytest.fixture(scope="module")
def check_env():
    """CPU only, the test's Python, and the session's compilation cache."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)  # the script must find the package by itself
    return env


def run_script(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, check_env):
    """One ``--tiny`` run from a folder outside the repository, into ``out/`` there."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    proc = run_script(["--tiny", "--out", "out"], cwd, check_env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    files = list((cwd / "out").glob("device_check-tiny-cpu-*.json"))
    assert len(files) == 1, files
    return proc, json.loads(files[0].read_text()), files[0]


def test_tiny_has_every_section(tiny):
    _, payload, _ = tiny
    assert payload["mode"] == "tiny" and payload["preset"] == "lucid"
    assert payload["weights"] == "random" and payload["environment"]["platform"] == "cpu"
    for section in SECTIONS:
        assert payload.get(section), section
    assert payload["skipped"] == [] and payload["failed"] == [] and payload["stopped"] is None
    assert payload["heavy_modules_imported"] == []  # none the GPU machine may lack
    assert 0 < payload["elapsed_s"] <= payload["budget_s"]


def test_tiny_ceilings_and_layers(tiny):
    _, payload, _ = tiny
    for dtype in DTYPES:
        for name in ("matmul", "conv_fwd", "conv_input_grad"):
            assert payload["ceilings"][dtype][name]["flops_per_s_median"] > 0, (dtype, name)
    rows = payload["layers"]
    assert {(r["layer"], r["dtype"]) for r in rows} == {
        (layer, dtype) for layer in payload["layer_set"] for dtype in DTYPES
    }
    for r in rows:
        assert r["size"] == 32 and r["k"] == 2 and r["chunk"] == r["rule_chunk"] == 1
        assert r["filter_steps_per_s"] > 0 and r["executed_flops_per_s"] > 0
        assert r["compile_s"] > 0 and r["timed_calls"] >= 3
        assert payload["compile_s"]["layers"][f"{r['layer']} {r['dtype']}"] == r["compile_s"]


def test_tiny_sweeps_and_projection(tiny):
    _, payload, _ = tiny
    chunks, ks = payload["chunk_sweep"], payload["block_steps"]
    assert [r["chunk"] for r in chunks["rows"]] == [1, 2] and chunks["rule_chunk"] == 1
    assert [r["k"] for r in ks["rows"]] == [1, 2] and ks["default_k"] == 2
    for sweep in (chunks, ks):
        assert all(r["filter_steps_per_s"] > 0 for r in sweep["rows"])
        assert 0 < sweep["chosen_over_best"] <= 1 and sweep["best"] in (1, 2)
    assert chunks["accelerator_rule_chunk"] >= 1
    pair = payload["one_channel"]
    assert [r["variant"] for r in pair["rows"]] == ["all channels", "one channel"]
    assert [r["target_conv_one_channel"] for r in pair["rows"]] == [False, True]
    assert pair["one_over_all"] > 0 and pair["layer"] == chunks["layer"]
    assert payload["peak_memory"]["peak_rss_bytes"] > 0
    for dtype in DTYPES:
        proj = payload["projection"][dtype]
        assert proj["filters"] == 4224 and proj["size"] == 224 and proj["steps"] == 512
        assert proj["total_hours_by_flops"] > 0 and proj["compile_hours"] > 0
        assert len(proj["rows"]) == 13


def test_tiny_prints_the_summary_last(tiny):
    proc, payload, path = tiny
    lines = proc.stdout.rstrip("\n").splitlines()
    title = max(i for i, line in enumerate(lines) if line.startswith("Summary:"))
    assert str(path) in lines[title]
    table = lines[title + 1 :]
    assert table and all(line.startswith("|") for line in table), table
    text = "\n".join(table)
    labels = ("matmul", "block1_conv1 @ 32 px", "chunk: rule", "k: engine", "one channel")
    for label in (*labels, "peak", "atlas"):
        assert label in text, label
    assert len(table) == 2 + 2 + len(payload["layer_set"]) + 6  # header, rule, rows


def test_budget_skips_cleanly(tmp_path, check_env):
    """With no time, only the (mandatory) ceilings run; the rest is listed as skipped."""
    proc = run_script(["--tiny", "--budget-s", "0", "--out", str(tmp_path)], tmp_path, check_env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (path,) = tmp_path.glob("device_check-tiny-*.json")
    payload = json.loads(path.read_text())
    assert payload["layers"] == [] and payload["chunk_sweep"]["rows"] == []
    assert payload["projection"] == {"float32": None, "bfloat16": None}
    assert payload["one_channel"]["rows"] == [] and payload["one_channel"]["one_over_all"] is None
    # layers x dtypes, 2 chunks, 2 ks, and the first of the one-channel pair
    assert len(payload["skipped"]) == len(payload["layer_set"]) * 2 + 2 + 2 + 1
    assert "skipped" in proc.stdout.splitlines()[-1]  # the summary's last row says so


def test_refuses_cpu_without_tiny(tmp_path, check_env):
    proc = run_script(["--out", str(tmp_path)], tmp_path, check_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "platform is 'cpu'" in lines[0] and "--tiny" in lines[0], lines
    assert not list(tmp_path.glob("*.json"))


def test_plans_nearest_the_rule_first_and_within_the_deadline():
    from benchmarks.device_budget import Budget
    from benchmarks.device_parts import nearest_first
    from benchmarks.device_summary import verdict

    assert nearest_first({1, 4, 16, 64, 256, 512, 128}, 128) == [128, 64, 256, 512, 16, 4, 1]
    assert nearest_first((4, 8, 16, 32), 16) == [16, 8, 32, 4]
    budget = Budget(10.0, {"a": 100.0, "b": 1.0})
    a = budget.part("a")
    assert 9.0 < a.left() <= 10.0  # the deadline, not the part's larger cap
    assert a.allows("small", 5.0) and not a.allows("big", 50.0)
    assert budget.part("b").left() <= 1.0
    assert budget.skipped() == [a.skipped[0]] and "big skipped" in a.skipped[0]
    rows = [{"chunk": 1, "filter_steps_per_s": 2.0}, {"chunk": 4, "filter_steps_per_s": 8.0}]
    assert verdict(rows, "chunk", 1) == {"best": 4, "chosen_over_best": 0.25}
    assert verdict(rows, "chunk", 16) == {"best": 4, "chosen_over_best": None}
