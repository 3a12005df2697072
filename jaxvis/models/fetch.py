"""Downloads Keras's official VGG16 weight files into a local cache, verified by MD5.

Only for users with network access; everything else in jaxvis works offline. A download
goes to a temporary file next to its destination and is renamed into place only after
its MD5 matches the one Keras publishes, so the cache never holds a partial or wrong file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TextIO

from tqdm import tqdm

from jaxvis.errors import JaxvisError, choices

# Keras applications/vgg16.py: WEIGHTS_PATH and WEIGHTS_PATH_NO_TOP, with the file_hash
# arguments it passes to keras.utils.get_file.
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
URLS = {
    "top": _BASE + "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    "notop": _BASE + "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
MD5 = {
    "top": "64373286793e3c8b2b4e3219cbf3544b",
    "notop": "6d6bbae143d832006294945121d1f1fc",
}
_CHUNK = 1 << 20
_TIMEOUT_S = 60


def default_cache_dir() -> str:
    """``$JAXVIS_CACHE`` if set, else ``~/.cache/jaxvis``."""
    return os.environ.get("JAXVIS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "jaxvis"
    )


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _meter(label: str, total: int | None, enabled: bool, stream: TextIO | None = None):
    """Yields ``update(n_bytes)`` for a download's progress on ``stream`` (stderr).

    On a terminal that is a tqdm bar in bytes. Off one, tqdm's ``\\r`` redraws would make
    a log one unreadable line, so it writes a plain line when the download starts and one
    when it ends or fails. Disabled, it writes nothing.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        yield lambda n: None
        return
    if getattr(stream, "isatty", None) and stream.isatty():
        with tqdm(total=total, desc=label, unit="B", unit_scale=True, file=stream) as bar:
            yield bar.update
        return
    size = f" ({total / 1e6:.1f} MB)" if total else ""
    stream.write(f"jaxvis: downloading {label}{size}\n")
    stream.flush()
    chunks: list[int] = []
    start = time.monotonic()
    try:
        yield chunks.append
    except BaseException:
        stream.write(f"jaxvis: download of {label} stopped after {sum(chunks) / 1e6:.1f} MB\n")
        raise
    else:
        took = tqdm.format_interval(time.monotonic() - start)
        stream.write(f"jaxvis: downloaded {label}, {sum(chunks) / 1e6:.1f} MB in {took}\n")
    finally:
        stream.flush()


def _download(url: str, out, label: str, progress: bool) -> str:
    """Streams ``url`` into the open file ``out``; returns the MD5 of what it wrote."""
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with _meter(label, total, progress) as update:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                update(len(chunk))
    return digest.hexdigest()


def _reason(e: Exception) -> str:
    """One line for a network error: "HTTP Error 404: Not Found", "[Errno 111] ..."."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason
    return (str(e).splitlines() or [""])[0] or type(e).__name__


def fetch(
    which: str = "notop",
    *,
    cache_dir: str | None = None,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> str:
    """Downloads a Keras VGG16 weights file unless a verified copy is already cached.

    Args:
      which: ``"top"`` (with the 1000-class head, 553 MB) or ``"notop"`` (conv layers
        only, 59 MB).
      cache_dir: where to keep the file; default :func:`default_cache_dir`.
      url: download from here instead of Keras's URL (mirrors, tests).
      md5: expected MD5 hex digest instead of Keras's published one.
      progress: draw a progress bar on stderr.

    Returns:
      The path of the verified file, for ``jaxvis.vgg16(weights=path)``.

    Raises:
      JaxvisError: one line, for an unknown ``which``, a network failure or an MD5
        mismatch. Nothing is left in the cache in either failure.
    """
    if which not in URLS:
        raise JaxvisError(f"unknown weights file {which!r}; valid: {choices(URLS)}")
    url = url or URLS[which]
    expected = (md5 or MD5[which]).lower()
    folder = cache_dir or default_cache_dir()
    name = os.path.basename(urllib.parse.urlparse(url).path) or os.path.basename(URLS[which])
    dest = os.path.join(folder, name)
    if os.path.isfile(dest) and _md5(dest) == expected:
        return dest
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=folder, prefix=name.removesuffix(".h5") + ".", suffix=".h5.tmp"
        )
    except OSError as e:
        raise JaxvisError(f"cannot write to the weights cache {folder}: {e}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            got = _download(url, out, name, progress)
        if got != expected:
            raise JaxvisError(
                f"download of {url} has MD5 {got}, expected {expected}; nothing was saved, "
                "try again or check the URL"
            )
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as e:
        raise JaxvisError(f"could not download {url}: {_reason(e)}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest
