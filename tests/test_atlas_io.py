"""``benchmarks/atlas_io.py --tiny`` runs the real AtlasWriter end to end, writes its JSON,
cleans up its atlases, and shows the in-place writer's I/O staying linear."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_atlas_io_tiny(tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "benchmarks.atlas_io", "--tiny", "--out-dir", str(tmp_path)]
    run = subprocess.run(
        [*cmd, "--work-dir", str(work)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = tmp_path.glob("atlas_io-inplace-tiny-*.json")
    assert str(result) in run.stdout and "| target GB" in run.stdout
    payload = json.loads(result.read_text())
    assert payload["mode"] == "tiny" and payload["writer"] == "inplace"
    assert payload["format_version"] == 3 and payload["chunk"]["units"] == 8
    rows = payload["rows"]
    assert [r["target GB"] for r in rows] == [0.001, 0.004]
    for row in rows:
        assert row["total measured"] and row["commit s (median)"] > 0
        assert row["commits"] * payload["chunk"]["bytes"] >= row["target GB"] * 1e9
        # Linear: each row written once (no copy of the file per commit).
        assert row["written GB (sum)"] <= 1.2 * row["file GB"]
        if os.path.exists("/proc/self/io"):
            assert 0 < row["written GB (/proc)"] <= 4 * row["file GB"]
    assert not work.exists()  # the synthetic atlases are deleted
