"""The site's stylesheet (``assets/site.css``), kept in Python so it ships with the
package without any package-data configuration."""

CSS = """\
:root { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
  background: #fff; }
body { margin: 1rem 1.5rem 3rem; }
[hidden] { display: none !important; }
h1 { font-size: 1.35rem; margin: .4rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.1rem; }
a { color: #1f5fa8; }
nav { font-size: .9rem; }
.meta { color: #555; font-size: .9rem; overflow-wrap: anywhere; }
table { border-collapse: collapse; }
th, td { padding: .25rem .55rem; border-bottom: 1px solid #eee; text-align: left;
  vertical-align: middle; }
.provenance th { white-space: nowrap; font-weight: 600; }
.provenance td { font-family: ui-monospace, monospace; font-size: .82rem;
  overflow-wrap: anywhere; }
.layers td { font-size: .9rem; font-variant-numeric: tabular-nums; }
.layers td:first-child { min-width: 9rem; max-width: 24rem; overflow-wrap: break-word; }
.sprite { position: relative; overflow: hidden; display: inline-block;
  vertical-align: middle; background: #f2f2f2; }
.sprite img { position: absolute; max-width: none; height: auto; display: block; }
.pixelated img { image-rendering: pixelated; }
.strip { white-space: nowrap; }
.strip a { margin-right: 2px; }
.controls { margin: .6rem 0 .9rem; font-size: .9rem; display: flex; gap: 1.2rem;
  align-items: center; flex-wrap: wrap; }
#shown { color: #666; }
.grid { display: flex; flex-wrap: wrap; gap: 4px; }
a.unit { display: flex; flex-direction: column; align-items: center; gap: 2px;
  padding: 3px; border-radius: 4px; color: inherit; text-decoration: none; }
a.unit:hover, a.unit.current { background: #e3edf9; }
.label { font-size: .7rem; font-variant-numeric: tabular-nums; }
.missing { display: inline-flex; align-items: center; justify-content: center;
  color: #a02020; background: #fbe9e9; font-size: .75rem; }
#unit-view { position: fixed; inset: 0; background: rgba(25, 25, 25, .55);
  overflow: auto; display: flex; justify-content: center; align-items: flex-start;
  padding: 2rem 1rem; }
.unit-card { background: #fff; border-radius: 8px; padding: .8rem 1.2rem 1.2rem;
  max-width: 980px; box-shadow: 0 4px 24px rgba(0, 0, 0, .3); }
.unit-card h2 { margin: .3rem 0 .5rem; overflow-wrap: anywhere; }
.unit-nav { display: flex; justify-content: space-between; gap: 1rem; }
.unit-nav .off { visibility: hidden; }
.pictures { display: flex; gap: 1rem; align-items: flex-start; flex-wrap: wrap; }
.diversity { display: flex; gap: 4px; flex-wrap: wrap; margin-top: .5rem; }
.failure { color: #a02020; white-space: pre-wrap; overflow-wrap: anywhere; }
.player { display: flex; flex-direction: column; gap: .3rem; font-size: .85rem; }
.player-controls { display: flex; gap: .5rem; align-items: center; }
.plot { position: relative; display: inline-block; margin: .6rem 0 0; }
.plot img { display: block; }
.plot .marker { position: absolute; width: 0; border-left: 1px solid #c0392b; }
"""
