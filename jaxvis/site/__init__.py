"""Static web sites of atlases: ``build_site(atlas, out_dir)``, opened from ``file://``.

Importing this package does not import jax (the atlas is read by jaxvis/atlas/reader.py)
nor matplotlib (only jaxvis/site/plots.py does, when it draws).
"""

from jaxvis.site.build import SiteSummary, build_site
from jaxvis.site.layout import SiteOptions

__all__ = ["SiteOptions", "SiteSummary", "build_site"]
