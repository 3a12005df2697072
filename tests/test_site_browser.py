"""The site of a real atlas, opened from file:// in headless Chromium.

The browser is driven over the DevTools protocol (jaxvis/site/browser.py), so the checks
are the browser's own: which images loaded, what the console said, which dialogs opened,
where the address went, what the screen shows. The atlas is a tiny real run
(``generate_atlas``, random VGG16, keras-vis preset, 2 layers x 3 units, 32 px, 8
steps, a snapshot every 2 steps) plus, by hand, one failed unit and a copy of a layer
under a hostile name.

Without Chromium the whole file is skipped, with a warning in the summary; .ci/run
installs Debian's ``chromium`` first, so in CI it runs.
"""

from __future__ import annotations

import io
import os
import warnings

import h5py
import numpy as np
import pytest
from chunks import make_chunk
from PIL import Image

from jaxvis.atlas import AtlasWriter, open_atlas
from jaxvis.site import build_site
from jaxvis.site.browser import Browser, find_chromium

if find_chromium() is None:
    _WHY = (
        "Chromium is not installed, so the site was NOT checked in a browser; install "
        "Debian's chromium (apt-get install -y chromium), as .ci/run does"
    )
    warnings.warn(_WHY, stacklevel=1)
    pytest.skip(_WHY, allow_module_level=True)

LAYERS = ("block1_conv1", "block1_conv2")
HOSTILE = "<img src=x onerror=alert(1)>\"'..<script>alert(2)"
FAILED = (5, "objective became NaN at step 4 <b>bold?</b>")
EVERY = 2  # a snapshot every 2 of the 8 steps: 4 frames
ALL_LOADED = "[...document.images].every((i) => i.complete && i.naturalWidth > 0)"


def _generate(path: str) -> None:
    """The tiny real atlas, with the snapshots player's frames."""
    import jaxvis

    jaxvis.generate_atlas(
        jaxvis.vgg16(None), path, {la: [0, 1, 2] for la in LAYERS}, size=32, steps=8,
        preset="keras-vis", progress=False, snapshots=EVERY,
    )  # fmt: skip


def _by_hand(path: str) -> None:
    """What a run of random weights does not make: a failed unit, a hostile layer name."""
    with h5py.File(path, "r+") as f:  # format 3: rows are preallocated, the record counts
        group = f[LAYERS[1]]
        group["failed_filters"][0] = FAILED[0]
        group["failed_messages"][0] = FAILED[1].encode()
        group["committed"][1] = 1
        f.copy(f[LAYERS[0]], HOSTILE)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    path = str(folder / "tiny.h5")
    _generate(path)
    _by_hand(path)
    summary = build_site(path, folder / "site", image_format="png", workers=1)
    with open_atlas(path) as atlas:
        units = {name: _units(atlas[name]) for name in atlas.layers}
    return summary, units


def _units(view):
    return {
        int(f): (view.images[row], float(view.objective[row]), view.snapshots[row])
        for row, f in enumerate(view.filters)
    }


@pytest.fixture(scope="module")
def browser():
    with Browser(width=1200, height=900) as b:
        yield b


@pytest.fixture(autouse=True)
def clean_console(browser):
    """Every test starts with an empty record and must leave it so: no console errors,
    no failed loads, no dialogs (a name run as script would open one)."""
    browser.errors.clear()
    browser.dialogs.clear()
    yield
    assert browser.errors == [] and browser.dialogs == []


def keep(png: bytes, name: str, tmp_path) -> None:
    """Saves a screenshot in the test's folder, and in $JAXVIS_SITE_SHOTS if set (to
    look at)."""
    for folder in (tmp_path, os.environ.get("JAXVIS_SITE_SHOTS")):
        if folder:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(png)


def url(summary, page: str) -> str:
    return "file://" + os.path.join(os.path.dirname(summary.index), page)


def open_page(browser, address: str) -> None:
    browser.goto("about:blank")  # a fresh load even if only the fragment differs
    browser.goto(address)
    browser.wait_for(f"document.readyState === 'complete' && {ALL_LOADED}")


def grab(browser, selector: str) -> np.ndarray:
    """What the screen shows of the element, as RGB pixels."""
    box = browser.evaluate(
        f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
        " return {x: r.left, y: r.top, width: r.width, height: r.height}; })()"
    )
    png = browser.screenshot(clip=box)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def shown_as(pixels: np.ndarray, picture: np.ndarray) -> float:
    """Mean absolute difference between what is on screen and ``picture`` [H, W, 3],
    after averaging the screen down to the picture's size (it is drawn enlarged)."""
    h, w = picture.shape[:2]
    f = pixels.shape[0] // h
    small = pixels[: h * f, : w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3))
    return float(np.abs(small - picture).mean())


def test_index_links_lead_to_every_layer(site, browser, tmp_path):
    summary, units = site
    open_page(browser, url(summary, "index.html"))
    keep(browser.screenshot(), "index.png", tmp_path)
    links = browser.evaluate(
        "[...document.querySelectorAll('a.layer-link')].map((a) => [a.textContent, a.href])"
    )
    assert [name for name, _ in links] == list(units)  # the hostile name, as text
    for name, href in links:
        open_page(browser, href)
        assert browser.evaluate("document.getElementById('layer-name').textContent") == name
        cells = browser.evaluate("[...document.querySelectorAll('a.unit')].map((a) => a.id)")
        failed = [FAILED[0]] if name == LAYERS[1] else []
        assert cells == [f"cell-{u}" for u in sorted([*units[name], *failed])]
    assert HOSTILE in browser.evaluate("document.title")


def test_layer_page_loads_one_sheet_and_shows_the_pictures(site, browser, tmp_path):
    summary, units = site
    browser.requests.clear()
    open_page(browser, url(summary, f"{LAYERS[0]}.html"))
    sheets = [r for r in browser.requests if r.endswith(".png")]
    assert [os.path.basename(r) for r in sheets] == ["thumbs-0.png"]
    counts = browser.evaluate(
        "[document.images.length, document.querySelectorAll('a.unit').length]"
    )
    assert counts == [3, 3]
    shot = browser.screenshot()
    keep(shot, "layer.png", tmp_path)
    screen = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
    inked = np.any(screen < 200, axis=-1).mean()  # text, controls and pictures
    colours = len(np.unique(screen.reshape(-1, 3), axis=0))
    assert inked > 0.01 and colours > 500, (inked, colours)  # not blank
    for unit, (picture, _, _) in units[LAYERS[0]].items():
        assert shown_as(grab(browser, f"#cell-{unit} .sprite"), picture) < 3, unit


def test_permalink_opens_its_unit(site, browser, tmp_path):
    summary, units = site
    picture, objective, _ = units[LAYERS[1]][2]
    open_page(browser, url(summary, f"{LAYERS[1]}.html#unit-2"))
    title = browser.evaluate("document.getElementById('unit-title').textContent")
    assert title == f"{LAYERS[1]} · unit 2"
    assert shown_as(grab(browser, "#unit-picture .sprite"), picture) < 3
    text = browser.evaluate("document.getElementById('unit-objective').textContent")
    assert float(text.split()[-1]) == pytest.approx(objective, rel=1e-4)
    plot = browser.evaluate("[document.getElementById('unit-plot').naturalWidth]")
    assert plot == [400]  # the objective curve, loaded
    keep(browser.screenshot(), "unit.png", tmp_path)


def test_clicks_and_arrow_keys_move_between_units(site, browser):
    summary, _ = site
    open_page(browser, url(summary, f"{LAYERS[0]}.html"))
    browser.click("#cell-1")
    title = "document.getElementById('unit-title')?.textContent"
    for key, want in ((None, 1), ("ArrowRight", 2), ("ArrowRight", 2), ("ArrowLeft", 1),
                      ("ArrowLeft", 0)):  # fmt: skip
        if key:
            browser.key(key)
        browser.wait_for(f"{title} === '{LAYERS[0]} · unit {want}'")
        assert browser.evaluate("location.hash") == f"#unit-{want}"
    browser.wait_for(ALL_LOADED)
    browser.key("Escape")
    assert browser.wait_for("document.getElementById('unit-view').hidden")


def test_sorting_and_the_failed_filter(site, browser):
    summary, units = site
    open_page(browser, url(summary, f"{LAYERS[1]}.html"))
    browser.evaluate(
        "(() => { const s = document.getElementById('sort'); s.value = 'objective';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    order = browser.evaluate("[...document.querySelectorAll('a.unit')].map((a) => a.id)")
    best_first = sorted(units[LAYERS[1]], key=lambda u: -units[LAYERS[1]][u][1])
    assert order == [f"cell-{u}" for u in [*best_first, FAILED[0]]]
    browser.click("#failed-only")
    shown = "[...document.querySelectorAll('a.unit')].filter((a) => !a.hidden).map((a) => a.id)"
    assert browser.wait_for(f"{shown}.length === 1 && {shown}") == [f"cell-{FAILED[0]}"]
    browser.click(f"#cell-{FAILED[0]}")
    message = browser.wait_for("document.getElementById('unit-failure')?.textContent")
    assert message == f"failed: {FAILED[1]}"


def test_the_player_shows_each_snapshot(site, browser):
    summary, units = site
    _, _, frames = units[LAYERS[0]][1]
    open_page(browser, url(summary, f"{LAYERS[0]}.html#unit-1"))
    strip = browser.evaluate("document.querySelector('#player img').naturalWidth")
    assert strip == 32 * len(frames) == 32 * 8 // EVERY
    browser.click("#play")  # pause the loop, then choose frames with the slider
    for s in range(len(frames)):
        browser.evaluate(
            f"(() => {{ const r = document.getElementById('frame'); r.value = {s};"
            " r.dispatchEvent(new Event('input')); })()"
        )
        step = browser.evaluate("document.getElementById('frame-step').textContent")
        assert step == f"step {(s + 1) * EVERY} of 8"
        assert shown_as(grab(browser, "#player .sprite"), frames[s]) < 3, s
    assert browser.evaluate("!!document.querySelector('.plot .marker')")


def test_hostile_layer_name_stays_text(site, browser):
    summary, units = site
    stem = os.path.basename(
        next(p for p in summary.written if p.endswith(".html") and "onerror" in p)
    )
    open_page(browser, url(summary, f"{stem}#unit-0"))
    assert browser.evaluate("document.getElementById('layer-name').textContent") == HOSTILE
    assert browser.evaluate("document.getElementById('unit-title').textContent") == (
        f"{HOSTILE} · unit 0"
    )
    assert browser.evaluate("document.querySelectorAll('script').length") == 2  # the site's


def test_thumbnails_load_lazily_a_sheet_at_a_time(browser, tmp_path):
    """A long layer (2,048 synthetic units, 32 sheets): opening it fetches only the
    sheets near the screen, each once, and scrolling down fetches the rest."""
    path, n = str(tmp_path / "long.h5"), 2048
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    history = rng.random((n, 2), dtype=np.float32)
    provenance = {"model": "m", "weights": {}, "config": {}, "device_kind": "cpu"}
    with AtlasWriter(path, provenance=provenance) as w:
        chunk = make_chunk("long", np.arange(n), images, history[:, -1], history)
        w.write_chunk("long", chunk, num_filters_in_layer=n)
    summary = build_site(path, tmp_path / "site", plots=False)
    browser.requests.clear()
    browser.goto("about:blank")
    browser.goto(url(summary, "long.html"))
    browser.wait_for_images(in_view=True)
    sheets = lambda: [r for r in browser.requests if "/thumbs-" in r]  # noqa: E731
    assert 1 <= len(sheets()) < 16, sheets()
    for y in range(0, browser.evaluate("document.body.scrollHeight"), 700):
        browser.evaluate(f"window.scrollTo(0, {y})")
        browser.wait_for_images(in_view=True)
    browser.wait_for_images()
    assert len(sheets()) == len(set(sheets())) == n // 64
