"""Progress display: cost-weighted ETAs from an injected clock, plain log lines off a
terminal, a tqdm bar on one, a summary that never calls a stopped run done, and the
units it counts (an atlas's filters, attribution's images)."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from jaxvis.errors import JaxvisError
from jaxvis.progress import Progress, format_duration


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_are_plain_and_rate_limited():
    clock, out = Clock(), io.StringIO()
    bar = Progress({"a": 8, "b": 4}, stream=out, clock=clock, log_interval=10)
    bar.start_layer("a")  # a layer's start always gets a line
    clock.t += 2
    bar.advance("a", 2)  # 2 s after the last line: skipped
    clock.t += 8
    bar.advance("a", 2)  # 10 s after it: written
    clock.t += 1
    bar.advance("a", 4)  # the layer's end always gets a line
    bar.start_layer("b")
    clock.t += 4
    bar.advance("b", 1)
    bar.close()
    assert "\r" not in out.getvalue()
    assert out.getvalue().splitlines() == [
        "jaxvis: a 0/8 | total 0/12, ETA ?",
        "jaxvis: a 4/8, 0.4 filters/s, ETA 00:10 | total 4/12, ETA 00:20",
        "jaxvis: a 8/8, 0.727 filters/s, ETA 00:00 | total 8/12, ETA 00:06",
        "jaxvis: b 0/4 | total 8/12, ETA 00:06",
        "jaxvis: done: 9/12 filters in 00:15",
    ]


def test_overall_eta_weighs_layers_by_cost():
    clock, out = Clock(), io.StringIO()
    bar = Progress(
        {"cheap": 2, "dear": 2}, stream=out, clock=clock, costs={"cheap": 1.0, "dear": 10.0}
    )
    bar.start_layer("cheap")
    clock.t += 2
    bar.advance("cheap", 2)  # 2 cost units in 2 s; 20 left: 20 s, where a count says 2 s
    assert bar.line() == "cheap 2/2, 1 filters/s, ETA 00:00 | total 2/4, ETA 00:20"
    bar.start_layer("dear")
    clock.t += 10
    bar.advance("dear", 1)  # 12 units in 12 s; 10 left
    assert bar.line() == "dear 1/2, 0.1 filters/s, ETA 00:10 | total 3/4, ETA 00:10"


def test_terminal_gets_a_tqdm_bar_over_the_cost():
    clock, out = Clock(), Tty()
    bar = Progress(
        {"cheap": 2, "dear": 4}, stream=out, clock=clock, costs={"cheap": 1.0, "dear": 10.0}
    )
    bar.start_layer("cheap")
    assert isinstance(bar._bar, tqdm) and bar._bar.total == 42
    clock.t += 2
    bar.advance("cheap", 2)
    drawn = out.getvalue().split("\r")[-1]
    # tqdm's own ETA is the cost-weighted one, and its bar fills by cost: 2 of 42 units.
    assert drawn.startswith("jaxvis: cheap 2/2, 1 filters/s, ETA 00:00 | total 2/6, ETA 00:40")
    assert "  5%|" in drawn
    bar.start_layer("dear")
    clock.t += 0.5
    bar.advance("dear", 1)  # 12 units in 2.5 s, 30 left: 6.25 s (a moving average says 5)
    drawn = out.getvalue().split("\r")[-1]
    assert drawn.startswith("jaxvis: dear 1/4, 2 filters/s, ETA 00:02 | total 3/6, ETA 00:06")
    assert " 29%|" in drawn
    bar.close()
    text = out.getvalue()
    assert text.endswith("\rjaxvis: done: 3/6 filters in 00:02\n") and text.count("\n") == 1


def test_terminal_redraws_at_most_ten_times_a_second_but_shows_each_layer_end():
    clock, out = Clock(), Tty()
    bar = Progress({"a": 3}, stream=out, clock=clock)
    bar.start_layer("a")
    draws = out.getvalue().count("\r")
    clock.t += 0.01
    bar.advance("a", 1)
    assert out.getvalue().count("\r") == draws  # too soon after the last draw
    clock.t += 0.01
    bar.advance("a", 2)
    assert out.getvalue().split("\r")[-1].startswith("jaxvis: a 3/3")


@pytest.mark.parametrize("stream", [io.StringIO, Tty])
def test_interrupted_run_says_stopped_not_done(stream):
    clock, out = Clock(), stream()
    with pytest.raises(KeyboardInterrupt), Progress({"a": 4}, stream=out, clock=clock) as bar:
        bar.start_layer("a")
        clock.t += 3
        bar.advance("a", 1)
        raise KeyboardInterrupt
    assert out.getvalue().endswith("jaxvis: stopped: 1/4 filters in 00:03\n")
    assert "done" not in out.getvalue()


def test_finished_run_says_done_once():
    clock, out = Clock(), io.StringIO()
    with Progress({"a": 1}, stream=out, clock=clock) as bar:
        bar.start_layer("a")
        bar.advance("a", 1)
        bar.close()
    assert out.getvalue().count("jaxvis: done: 1/1 filters in 00:00\n") == 1


@pytest.mark.parametrize("stream", [io.StringIO, Tty])
def test_disabled_writes_nothing(stream):
    out = stream()
    bar = Progress({"a": 3}, stream=out, enabled=False)
    bar.start_layer("a")
    bar.advance("a", 3)
    bar.close()
    assert out.getvalue() == "" and bar._bar is None


def test_layer_with_nothing_left_is_silent():
    clock, out = Clock(), io.StringIO()
    with Progress({"held": 0, "a": 1}, stream=out, clock=clock) as bar:
        bar.start_layer("held")  # a resumed atlas already holds it
        bar.start_layer("a")
        bar.advance("a", 1)
    assert "held" not in out.getvalue()


def test_format_duration():
    assert format_duration(0) == "00:00"
    assert format_duration(-3) == "00:00"
    assert format_duration(59.6) == "01:00"
    assert format_duration(3725) == "1:02:05"


def test_images_are_counted_as_images():
    """Attribution maps count images (jaxvis/attribution/command.py): the rate, the ETA
    and the summary say so, and nothing says filters."""
    clock, out = Clock(), io.StringIO()
    with Progress({"gradcam": 10}, stream=out, clock=clock, log_interval=5, noun="images") as bar:
        bar.start_layer("gradcam")
        clock.t += 5
        bar.advance("gradcam", 4)
        clock.t += 1
        bar.advance("gradcam", 6)
    assert out.getvalue().splitlines() == [
        "jaxvis: gradcam 0/10 | total 0/10, ETA ?",
        "jaxvis: gradcam 4/10, 0.8 images/s, ETA 00:08 | total 4/10, ETA 00:08",
        "jaxvis: gradcam 10/10, 1.67 images/s, ETA 00:00 | total 10/10, ETA 00:00",
        "jaxvis: done: 10/10 images in 00:06",
    ]


def test_images_on_a_terminal_and_when_stopped():
    clock, out = Clock(), Tty()
    bar = Progress({"ig": 4}, stream=out, clock=clock, noun="images")
    with pytest.raises(KeyboardInterrupt), bar:
        bar.start_layer("ig")
        clock.t += 2
        bar.advance("ig", 1)
        drawn = out.getvalue().split("\r")[-1]
        assert drawn.startswith("jaxvis: ig 1/4, 0.5 images/s, ETA 00:06 | total 1/4, ETA 00:06")
        raise KeyboardInterrupt
    assert out.getvalue().endswith("\rjaxvis: stopped: 1/4 images in 00:02\n")
    assert "filters" not in out.getvalue()


def test_unknown_noun_is_refused_in_one_line():
    with pytest.raises(JaxvisError, match="unknown progress noun 'units'; valid: filters, images"):
        Progress({"a": 1}, noun="units")
