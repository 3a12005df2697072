"""Names from an atlas made safe for a web page: escaped text, JSON inside ``<script>``,
and file names that cannot leave the site folder.

A layer name comes from a user's model and may hold anything HDF5 allows: markup
(``<img src=x onerror=...>``), quotes, ``..``, control characters. So a name is never
written into a page unescaped, never becomes markup through the page's script (which
uses ``textContent`` only, jaxvis/site/script.py), and never becomes a path: each layer
gets a file stem made of safe characters only (:func:`layer_stems`).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Sequence

from jaxvis.atlas.names import printable

# A name used as its own file stem: letters, digits, '_' and '-', as in VGG16's names.
_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
# Stems the site uses itself (index.html, assets/), compared case-insensitively.
RESERVED = frozenset({"index", "assets"})
# Inside <script type="application/json"> only "</script" or "<!--" could end the data
# early; escaping <, > and & as JSON \u escapes rules both out, and U+2028/U+2029 keep
# the text valid JavaScript too.
_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def text(value: object) -> str:
    """``value`` as HTML text or a quoted attribute value: non-printable characters shown
    as escapes (jaxvis/atlas/names.py), then ``& < > " '`` escaped."""
    return html.escape(printable(value if isinstance(value, str) else str(value)), quote=True)


def json_script(data: object) -> str:
    """``data`` as JSON that is safe inside ``<script type="application/json">``.

    Non-finite floats are refused (``allow_nan=False``): JSON has no NaN, and
    ``JSON.parse`` would reject the page's data; callers turn them into ``None``.
    """
    encoded = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return "".join(_JSON_ESCAPES.get(c, c) for c in encoded)


def layer_stems(names: Sequence[str]) -> dict[str, str]:
    """A file stem for each layer name: the name itself where it is plain and unique
    whatever the case (``block3_conv1``), else its safe characters plus a hash of the
    whole name (``script-alert-1-script.3f2a9c01d2``).

    Stems hold only ``[A-Za-z0-9_.-]``, never start with a dot and never equal ``.``
    or ``..``, so ``<stem>.html`` and ``<stem>/`` stay inside the site folder. The dot
    before the hash is a character plain names lack, so the two kinds never collide.
    """
    lowered: dict[str, int] = {}
    for name in names:
        if _PLAIN.fullmatch(name):
            lowered[name.lower()] = lowered.get(name.lower(), 0) + 1
    stems = {}
    for name in names:
        plain = _PLAIN.fullmatch(name) and name.lower() not in RESERVED
        if plain and lowered[name.lower()] == 1:
            stems[name] = name
        else:
            stems[name] = _hashed_stem(name)
    return stems


def _hashed_stem(name: str) -> str:
    slug = _UNSAFE_RUN.sub("-", name).strip("-")[:40] or "layer"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{slug}.{digest}"
