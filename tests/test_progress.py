"""Progress display: counts, rate and ETA from an injected clock; TTY vs log output."""

from __future__ import annotations

import io

from jaxvis.progress import Progress, format_duration


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_log_output_one_line_per_update():
    clock, out = Clock(), io.StringIO()
    bar = Progress({"a": 4, "b": 8}, stream=out, clock=clock)
    bar.start_layer("a")
    clock.t += 2.0
    bar.advance("a", 2)  # 1 filter/s overall, 10 left -> ETA 0:10
    clock.t += 2.0
    bar.advance("a", 2)
    bar.start_layer("b")
    clock.t += 4.0
    bar.advance("b", 4)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "jaxvis: a 0/4 | total 0/12, ETA --"
    assert lines[1] == "jaxvis: a 2/4, 1 filters/s, ETA 0:02 | total 2/12, ETA 0:10"
    assert lines[2] == "jaxvis: a 4/4, 1 filters/s, ETA 0:00 | total 4/12, ETA 0:08"
    assert lines[3] == "jaxvis: b 0/8 | total 4/12, ETA 0:08"
    assert lines[4] == "jaxvis: b 4/8, 1 filters/s, ETA 0:04 | total 8/12, ETA 0:04"
    assert lines[5] == "jaxvis: done: 8/12 filters in 0:08"
    assert len(lines) == 6


def test_overall_eta_weighs_layers_by_cost():
    clock, out = Clock(), io.StringIO()
    bar = Progress(
        {"cheap": 2, "dear": 2}, stream=out, clock=clock, costs={"cheap": 1.0, "dear": 10.0}
    )
    bar.start_layer("cheap")
    clock.t += 2.0
    bar.advance("cheap", 2)  # 2 cost units in 2 s; 20 units left -> 20 s, not 2 s
    assert bar.line().endswith("total 2/4, ETA 0:20")


def test_tty_redraws_in_place():
    clock, out = Clock(), Tty()
    bar = Progress({"layer_with_long_name": 100}, stream=out, clock=clock)
    bar.start_layer("layer_with_long_name")
    clock.t += 10
    bar.advance("layer_with_long_name", 50)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\rlayer_with_long_name 0/100") and text.endswith("\n")
    assert text.count("\n") == 1 and text.count("\r") == 3
    assert "5 filters/s, ETA 0:10" in text
    # The shorter final line is padded so no characters of the longer one remain.
    last = text.split("\r")[-1].rstrip("\n")
    previous = text.split("\r")[-2]
    assert len(last) >= len(previous) - 6 and last.startswith("done: 50/100")


def test_disabled_writes_nothing():
    out = io.StringIO()
    bar = Progress({"a": 3}, stream=out, enabled=False)
    bar.start_layer("a")
    bar.advance("a", 3)
    bar.close()
    assert out.getvalue() == ""


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(59.6) == "1:00"
    assert format_duration(3725) == "1:02:05"
