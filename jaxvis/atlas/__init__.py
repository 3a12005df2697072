"""Atlases: HDF5 files of feature visualizations (see docs/atlas-format.md).

Importing this package, and reading with it, does not import jax.
"""

from jaxvis.atlas.format import FORMAT_NAME, FORMAT_VERSION
from jaxvis.atlas.reader import Atlas, LayerView, open_atlas
from jaxvis.atlas.writer import AtlasWriter

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Atlas", "AtlasWriter", "LayerView", "open_atlas"]
