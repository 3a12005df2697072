"""One page in headless Chromium, driven over the DevTools protocol on a pipe
(jaxvis/site/devtools.py): no WebDriver, websocket library or network port.

For checking a built site in a real browser (tests/test_site_browser.py) and timing its
page loads (benchmarks/site.py). Everything the page reports is recorded: console
errors, uncaught exceptions, failed loads (the ``Log`` domain), JavaScript dialogs
(dismissed, so an ``alert`` cannot hang the check), and every request.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import threading
import time

from jaxvis.errors import JaxvisError
from jaxvis.site.devtools import DevTools

# Debian's package is "chromium"; other systems name it differently.
BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--remote-debugging-pipe",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str | None:
    """The Chromium binary: ``$JAXVIS_CHROMIUM``, or the first of :data:`BINARIES` on
    the PATH; None if there is none."""
    named = os.environ.get("JAXVIS_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    return next((path for b in BINARIES if (path := shutil.which(b))), None)


class Browser:
    """One headless Chromium with one page. Use it as a context manager.

    Attributes:
      errors: console errors, uncaught exceptions and failed loads, as text.
      dialogs: messages of the JavaScript dialogs that opened (and were dismissed).
      requests: URLs the page requested, in order.
    """

    def __init__(self, binary: str | None = None, *, width=1280, height=900, timeout=20.0):
        binary = binary or find_chromium()
        if binary is None:
            raise JaxvisError(f"no Chromium found; install it (one of {', '.join(BINARIES)})")
        self.timeout = timeout
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self._session = None
        self._profile = tempfile.mkdtemp(prefix="jaxvis-chromium-")
        command = [binary, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"]
        self._tools = DevTools(command, self._record, timeout)
        try:
            self._attach(width, height)
        except BaseException:
            self.close()
            raise

    def _record(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(
                " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"{entry['text']} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(params["message"])
            threading.Thread(target=self._dismiss, daemon=True).start()

    def _dismiss(self) -> None:
        self.send("Page.handleJavaScriptDialog", accept=False)

    def send(self, method: str, **params) -> dict:
        """One DevTools command to the page (jaxvis/site/devtools.py)."""
        return self._tools.send(method, self._session, **params)

    def _attach(self, width: int, height: int) -> None:
        target = self._tools.send("Target.createTarget", url="about:blank")
        reply = self._tools.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self._session = reply["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def goto(self, url: str) -> None:
        """Navigates and waits for the page's load event (or, for a change of the
        fragment only, for the same-document navigation)."""
        start = len(self._tools.events)
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"cannot open {url}: {result['errorText']}")
        same_document = not result.get("loaderId")
        wanted = "Page.navigatedWithinDocument" if same_document else "Page.loadEventFired"
        self._tools.wait_event(wanted, start)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        reply = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description") or details["text"])
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None):
        """Polls ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout or self.timeout} s: {expression}")
            time.sleep(0.05)

    def wait_for_images(self, in_view: bool = False, timeout: float | None = None) -> None:
        """Waits until every ``<img>`` (or every one whose box is on screen: lazy ones
        elsewhere are not fetched) has loaded with a non-zero natural width."""
        images = "[...document.images]"
        if in_view:
            images += (
                ".filter((i) => { const r = i.parentNode.getBoundingClientRect();"
                " return r.bottom > 0 && r.top < innerHeight; })"
            )
        self.wait_for(f"{images}.every((i) => i.complete && i.naturalWidth > 0)", timeout)

    def key(self, key: str) -> None:
        """Presses and releases one key, as a user would (``"ArrowRight"``, ``"Escape"``)."""
        codes = {"ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40, "Escape": 27}
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=key,
                windowsVirtualKeyCode=codes.get(key, 0),
            )

    def click(self, selector: str) -> None:
        """Clicks the middle of the first element matching ``selector``, with the mouse."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if box is None:
            raise RuntimeError(f"nothing matches {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )

    def screenshot(self, clip: dict | None = None) -> bytes:
        """PNG of the viewport, or of ``clip`` ``{x, y, width, height}`` in CSS px."""
        params = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])

    def close(self) -> None:
        """Closes Chromium and removes its temporary profile."""
        try:
            self._tools.close()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
