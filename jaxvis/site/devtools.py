"""A Chromium process and its DevTools protocol connection over a pipe.

``--remote-debugging-pipe`` makes Chromium read protocol messages on file descriptor 3
and write them on 4, each a JSON object ended by a NUL byte; so no WebDriver, websocket
library or network port is needed. A reader thread sorts what comes back into replies
(matched to commands by id) and events (kept in order, and passed to ``on_event``).
jaxvis/site/browser.py drives a page with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

# Runs in the child: moves the pipe's ends to fds 3 and 4, then becomes Chromium. The
# ends arrive numbered 10 and up (_above), so neither move overwrites the other.
_TRAMPOLINE = (
    "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); "
    "os.dup2(w, 4); os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])"
)


def _above(fd: int, lowest: int) -> int:
    """``fd`` moved to a number >= ``lowest`` (the old number is closed)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
    os.close(fd)
    return moved


class DevTools:
    """Starts ``command`` (Chromium with ``--remote-debugging-pipe``) and talks to it."""

    def __init__(self, command: Sequence[str], on_event: Callable[[dict], None], timeout: float):
        self.timeout = timeout
        self._on_event = on_event
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        to_child, from_child = (_above(fd, 10) for fd in (to_child, from_child))
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(to_child), str(from_child), *command],
            pass_fds=(to_child, from_child),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._next_id = 0
        self._lock = threading.Condition()
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._in, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                *messages, buffer = (buffer + chunk).split(b"\0")
                for raw in messages:
                    self._receive(json.loads(raw))
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _receive(self, message: dict) -> None:
        if "id" not in message:
            self._on_event(message)
        with self._lock:
            if "id" in message:
                self._replies[message["id"]] = message
            else:
                self.events.append(message)
            self._lock.notify_all()

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Sends one command (to ``session``, a page, or to the browser) and waits for
        its result; a protocol error raises RuntimeError."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._out, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(f"Chromium exited before {method}") from None
        with self._lock:
            if not self._lock.wait_for(
                lambda: ident in self._replies or self._closed, self.timeout
            ):
                raise TimeoutError(f"Chromium did not answer {method} in {self.timeout} s")
            if ident not in self._replies:
                raise RuntimeError(f"Chromium exited while answering {method}")
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_event(self, method: str, start: int) -> dict:
        """The first ``method`` event from index ``start`` of :attr:`events` on."""

        def found():
            return next((e for e in self.events[start:] if e.get("method") == method), None)

        with self._lock:
            if not self._lock.wait_for(lambda: found() or self._closed, self.timeout):
                raise TimeoutError(f"no {method} from Chromium in {self.timeout} s")
            event = found()
        if event is None:
            raise RuntimeError(f"Chromium exited while waiting for {method}")
        return event

    def close(self) -> None:
        """Asks Chromium to quit, then kills it if it has not within 5 s."""
        try:
            if self.process.poll() is None:
                with contextlib.suppress(RuntimeError, TimeoutError, OSError):
                    self.send("Browser.close")
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            os.close(self._out)
