"""Image files in, float32 RGB batches out: what ``jaxvis attribute`` feeds the model.

Two passes, so that a 10,000-image run fails in seconds, not after an hour:

1. :func:`list_images` walks the inputs (folders in sorted order, recursively, hidden
   entries skipped), reads each file's bytes once for its SHA-256 and checks its header
   with Pillow (format, size, mode, ``verify``) without decoding the pixels. The list of
   (path, sha256) is the run's identity in the maps file (jaxvis/attribution/maps_file/run.py).
2. :func:`load_chunks` decodes and resizes only the images to do, a chunk at a time, in a
   few threads (Pillow releases the GIL while decoding), one chunk ahead of the model.

Policy for bad files. A file named on the command line must be readable: anything else is
an error. Inside a folder, a file without an image extension is ignored, and a file with
one that Pillow cannot read (corrupt, truncated header, not really an image, too large)
is skipped with a warning and recorded in the maps file as skipped: one stray file
(macOS's ``._photo.jpg`` twins, a half-copied download) must not stop a large run, and the
same folder gives the same list again, so a resume matches. A grayscale, RGBA or other
non-RGB image is always refused, before anything is written, naming the first such file
and counting the rest: converting silently would attribute a picture the user never
gave. A file whose pixels fail to decode later (a truncated JPEG body) is reported by
:func:`load_chunks` as failed, and the run goes on.

Only Pillow reads files, and only the formats in :data:`FORMATS`: Pillow plugins such as
EPS would start Ghostscript, and none is needed for photographs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from jaxvis.atlas.names import printable
from jaxvis.errors import JaxvisError, choices

# Pillow formats that are decoded in-process by Pillow's own C code.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# Our own decompression-bomb limit, checked on the header before any pixel is decoded:
# 8192 x 8192 px (about 200 MB decoded as RGB), below Pillow's own MAX_IMAGE_PIXELS
# (89.5 MP warns, twice that raises), which stays as it is for the rest of the process.
MAX_PIXELS = 8192 * 8192
MAX_FILE_BYTES = 512 * 2**20
WORKERS = min(4, os.cpu_count() or 1)
_GRAY = {"1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}


class Unreadable(Exception):
    """A file Pillow cannot read as an image; the message says why (no path)."""


@dataclasses.dataclass(frozen=True)
class ImageList:
    """The images of a run, in order.

    Attributes:
      paths: absolute paths, [N].
      sha256: hex SHA-256 of each file's bytes, [N].
      skipped: ``(path, reason)`` of files in folders that could not be read.
    """

    paths: tuple[str, ...]
    sha256: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class Batch:
    """Decoded images of one chunk.

    Attributes:
      indices: int64 [n], positions in the :class:`ImageList`.
      images: float32 [n, size, size, 3], RGB in [0, 1].
      failed: ``{index: reason}`` for images of the chunk that failed to decode
        (not in ``indices``).
    """

    indices: np.ndarray
    images: np.ndarray
    failed: dict[int, str]


def list_images(inputs: Sequence[str], *, warn: Callable[[str], None] = print) -> ImageList:
    """Walks files and folders, hashes each file and checks its header (no decoding).

    Args:
      inputs: image files and folders; a folder is walked recursively in sorted order.
      warn: called with a one-line message for each skipped or ignored file.

    Returns:
      The :class:`ImageList`. Raises a one-line JaxvisError for a named file that cannot
      be read, for any image that is not RGB, and when no image is found.
    """
    candidates = []  # (path, named on the command line)
    for given in inputs:
        if os.path.isdir(given):
            files, ignored = _walk(given)
            candidates += [(p, False) for p in files]
            if ignored:
                warn(f"ignored {ignored} files in {printable(given)} without an image extension")
        elif os.path.exists(given):
            candidates.append((os.path.abspath(given), True))
        else:
            raise JaxvisError(f"no such image file or folder: {printable(given)}")
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        probes = list(pool.map(lambda c: _probe(c[0]), candidates))
    return _sorted_out(inputs, candidates, probes, warn)


def _sorted_out(inputs, candidates, probes, warn) -> ImageList:
    """Splits probe results into the list, the skipped files and the refusals."""
    paths, hashes, skipped, not_rgb = [], [], [], []
    for (path, named), (sha, problem, mode_error) in zip(candidates, probes, strict=True):
        if mode_error:
            not_rgb.append((path, mode_error))
        elif problem and named:
            raise JaxvisError(f"cannot read {printable(path)} as an image: {problem}")
        elif problem:
            warn(f"skipping {printable(path)}: {problem}")
            skipped.append((path, problem))
        else:
            paths.append(path)
            hashes.append(sha)
    if not_rgb:
        path, why = not_rgb[0]
        more = f", and {len(not_rgb) - 1} more images are not RGB" if len(not_rgb) > 1 else ""
        raise JaxvisError(
            f"{printable(path)} is {why}{more}; attribution needs RGB images: convert them "
            "to RGB first (e.g. Pillow's Image.convert('RGB'))"
        )
    if not paths:
        shown = ", ".join(printable(i) for i in inputs)
        raise JaxvisError(f"no readable images in {shown}; image extensions: {choices(EXTENSIONS)}")
    return ImageList(tuple(paths), tuple(hashes), tuple(skipped))


def _walk(folder: str) -> tuple[list[str], int]:
    """Image files under ``folder`` sorted by relative path, and how many were ignored."""
    found, ignored = [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            if name.lower().endswith(EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name), folder))
            else:
                ignored += 1
    found.sort(key=lambda rel: rel.split(os.sep))
    return [os.path.abspath(os.path.join(folder, rel)) for rel in found], ignored


def _probe(path: str) -> tuple[str, str, str]:
    """``(sha256, unreadable reason or "", not-RGB reason or "")`` of one file."""
    try:
        data = _read(path)
    except Unreadable as e:
        return "", str(e), ""
    sha = hashlib.sha256(data).hexdigest()
    try:
        with _open(data) as im:
            mode_error = _mode_error(im)
            im.verify()
    except Unreadable as e:
        return sha, str(e), ""
    except Exception as e:  # Pillow's verify raises whatever its plugin meets
        return sha, _reason(e), ""
    return sha, "", mode_error


def _read(path: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise Unreadable(f"{size / 2**20:.0f} MiB is over the {MAX_FILE_BYTES >> 20} MiB limit")
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise Unreadable(e.strerror or str(e)) from None


def _open(data: bytes) -> Image.Image:
    """Pillow's header parse of ``data``, limited to :data:`FORMATS` and :data:`MAX_PIXELS`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Unreadable(f"more than {MAX_PIXELS} pixels") from None
    except Image.UnidentifiedImageError:
        raise Unreadable(f"not an image in a format jaxvis reads ({choices(FORMATS)})") from None
    except Exception as e:
        raise Unreadable(_reason(e)) from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise Unreadable(f"{width}x{height} is more than {MAX_PIXELS} pixels")
    return im


def _mode_error(im: Image.Image) -> str:
    """Why ``im`` is not an RGB image, or "" (palette images without transparency are)."""
    mode = im.mode
    if mode == "RGB" or (mode == "P" and "transparency" not in im.info):
        return ""
    if mode in _GRAY:
        return f"grayscale (mode {mode})"
    if mode in _ALPHA or mode == "P":
        return f"RGBA, with transparency (mode {mode})"
    return f"not RGB (mode {mode})"


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return printable(text)


def load_image(path: str, size: int, sha256: str | None = None) -> np.ndarray:
    """One image as the model sees it.

    Args:
      path: the file.
      size: side of the square result; the whole image is resized to it (aspect ratio
        not kept, nothing cropped, so a map covers the whole picture), with Pillow's
        antialiased bilinear filter, after EXIF orientation is applied.
      sha256: if given, the file must still have these bytes.

    Returns:
      float32 [size, size, 3] RGB in [0, 1]. Raises :class:`Unreadable` or, for a
      non-RGB image, a JaxvisError.
    """
    data = _read(path)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise Unreadable("the file changed since it was listed (its sha256 differs)")
    with _open(data) as im:
        mode_error = _mode_error(im)
        if mode_error:
            raise JaxvisError(f"{printable(path)} is {mode_error}; convert it to RGB first")
        im.draft("RGB", (size, size))  # JPEG: decode at the smallest DCT scale >= size
        try:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        except Exception as e:  # truncated or corrupt pixel data
            raise Unreadable(_reason(e)) from None
    return np.asarray(rgb, np.float32) / 255.0


def load_chunks(
    images: ImageList, indices: np.ndarray, *, size: int, chunk: int
) -> Iterator[Batch]:
    """Decodes ``images[indices]`` in chunks of ``chunk``, the next one while the caller
    works on the current one, so that at most two chunks are in memory.

    Args:
      images: the run's :class:`ImageList`.
      indices: int [M] positions to load, in order.
      size: the model's image side in pixels.
      chunk: images per batch (the attributor's ``chunk``).

    Yields:
      One :class:`Batch` per chunk; images that fail to decode are in its ``failed``.
    """
    indices = np.asarray(indices, np.int64)
    parts = [indices[i : i + chunk] for i in range(0, len(indices), max(1, chunk))]
    if not parts:
        return
    # One thread assembles the next batch; the decodes run in a pool of their own, so
    # that the assembling thread never waits on the pool it occupies.
    with (
        concurrent.futures.ThreadPoolExecutor(1) as ahead,
        concurrent.futures.ThreadPoolExecutor(WORKERS) as decode,
    ):
        future = ahead.submit(_load_batch, decode, images, parts[0], size)
        for part in parts[1:]:
            batch = future.result()
            future = ahead.submit(_load_batch, decode, images, part, size)
            yield batch
        yield future.result()


def _load_batch(pool, images: ImageList, part: np.ndarray, size: int) -> Batch:
    def one(i: int):
        try:
            return load_image(images.paths[i], size, images.sha256[i]), ""
        except Unreadable as e:
            return None, str(e)

    results = list(pool.map(one, part.tolist()))
    ok = [i for i, (pixels, _) in zip(part.tolist(), results, strict=True) if pixels is not None]
    failed = {i: why for i, (pixels, why) in zip(part.tolist(), results, strict=True) if why}
    stack = [pixels for pixels, _ in results if pixels is not None]
    array = np.stack(stack) if stack else np.zeros((0, size, size, 3), np.float32)
    return Batch(np.array(ok, np.int64), array, failed)
