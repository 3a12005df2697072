"""Liveness of the processes of a distributed run, through the shared filesystem.

The processes of a distributed atlas share no runtime while they work
(jaxvis/cluster.py), only the folder of the atlas. So each one keeps a heartbeat file
there, a counter it rewrites every :data:`BEAT_SECONDS` from a thread, and a process that
waits for another one watches the counter. Only the counter's value is compared, with
the watcher's own clock: clocks of different hosts never meet. A peer whose counter has
not changed for ``timeout`` seconds, while its work is not done, is taken for dead, and
the waiter stops with one line instead of waiting for ever.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

BEAT_SECONDS = 1.0


class Heartbeat:
    """Rewrites ``path`` with a rising counter every :data:`BEAT_SECONDS` while open.

    Use it as a context manager. The thread is a daemon: a killed process simply stops
    beating, which is what its watchers look for.
    """

    def __init__(self, path: str):
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="jaxvis-heartbeat")

    def __enter__(self) -> Heartbeat:
        self._write(0)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        count = 1
        while not self._stop.wait(BEAT_SECONDS):
            self._write(count)
            count += 1

    def _write(self, count: int) -> None:
        # A full disk must not kill the run: the watchers then see a stopped process.
        with contextlib.suppress(OSError), open(self.path, "w") as f:
            f.write(f"{os.getpid()} {count}\n")


class Watch:
    """Tells, for a set of heartbeat files, which have stopped changing.

    Args:
      paths: ``{name: heartbeat path}``.
      timeout: seconds without a change after which a peer counts as stopped; a file
        that never appears counts from the moment the watch begins.
    """

    def __init__(self, paths: dict, timeout: float, clock=time.monotonic):
        self._paths = dict(paths)
        self.timeout = timeout
        self._clock = clock
        now = clock()
        self._first = {name: _read(path) for name, path in self._paths.items()}
        self._seen = {name: (value, now) for name, value in self._first.items()}

    def changed(self, name) -> bool:
        """Whether ``name``'s heartbeat has changed since the watch began."""
        return _read(self._paths[name]) != self._first[name]

    def stopped(self, names) -> list:
        """Those of ``names`` whose heartbeat has not changed for ``timeout`` seconds."""
        now = self._clock()
        out = []
        for name in names:
            value = _read(self._paths[name])
            last, since = self._seen[name]
            if value != last:
                self._seen[name] = (value, now)
            elif now - since > self.timeout:
                out.append(name)
        return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
