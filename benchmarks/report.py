"""Output of a benchmark: Markdown tables on stdout and one JSON file per run.

Tables are Markdown so they can be pasted into benchmarks/README.md; the JSON keeps
every timing and the environment, so a table can be re-derived and its machine checked.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from benchmarks import env

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_results(
    name: str, payload: dict, out_dir: str | None = None, replace: str | None = None
) -> str:
    """Writes ``<out_dir>/<name>-<device>-<YYYY-MM-DD>.json``; returns the path.

    A result already there is kept: a second run that day writes ``...-<date>-2.json``
    (then ``-3`` ...), so that a day's sittings, or two CPUs on one day, all survive.

    Args:
      out_dir: where to write; ``None`` for ``benchmarks/results``.
      replace: a path an earlier call of this run returned, to rewrite in place (a
        benchmark that saves its result after each part).
    """
    out_dir = out_dir or RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    environment = payload.setdefault("environment", env.environment())
    stem = os.path.join(out_dir, f"{name}-{env.device_slug()}-{environment['date']}")
    path, n = replace or f"{stem}.json", 1
    while not replace and os.path.exists(path):
        n += 1
        path = f"{stem}-{n}.json"
    tmp = f"{path}.tmp"  # written whole, then renamed: a crash leaves no half-written JSON
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _json_default(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
    return "-" if v is None else str(v)


def print_table(
    rows: Sequence[dict], title: str | None = None, columns: Sequence[str] | None = None
) -> None:
    """Prints rows of dicts as a Markdown table, numbers right-aligned."""
    if not rows:
        return
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for raw, row in zip(rows, cells, strict=True):
        just = [str.rjust if isinstance(raw.get(c), (int, float)) else str.ljust for c in columns]
        print("| " + " | ".join(j(v, w) for j, v, w in zip(just, row, widths, strict=True)) + " |")
    sys.stdout.flush()
