"""The layer page's script (``assets/site.js``), kept in Python so it ships with the
package.

It reads the page's data (``<script id="site-data">``, jaxvis/site/pages.py), sorts and
filters the grid that the page already holds, and shows the unit named by the address
(``#unit-17``): full-size picture, diversity images, the snapshots player and the
objective curve, with previous/next on the arrow keys. Text from the atlas is only ever
set with ``textContent`` and attribute values with ``setAttribute``, never parsed as
markup. Sprite positions follow jaxvis/site/layout.py (``cell``).
"""

JS = r"""'use strict';
(function () {
  const dataNode = document.getElementById('site-data');
  if (!dataNode) return;
  const site = JSON.parse(dataNode.textContent);
  const grid = document.getElementById('grid');
  const view = document.getElementById('unit-view');
  const sort = document.getElementById('sort');
  const failedOnly = document.getElementById('failed-only');
  const byUnit = new Map(site.units.map((u) => [u[0], u]));
  const cells = new Map();
  grid.querySelectorAll('a.unit').forEach((a) => cells.set(Number(a.dataset.unit), a));
  let order = [];
  let timer = null;

  function fill(template, key, value) {
    return template.replace('{' + key + '}', String(value));
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function rank(u) { return u[1] === null ? -Infinity : u[1]; }

  function arrange() {
    const units = site.units.slice();
    if (sort.value === 'objective') units.sort((a, b) => (rank(b) - rank(a)) || (a[0] - b[0]));
    else units.sort((a, b) => a[0] - b[0]);
    order = [];
    for (const u of units) {
      const cell = cells.get(u[0]);
      const show = !failedOnly.checked || u[3] !== null;
      cell.hidden = !show;
      grid.appendChild(cell);
      if (show) order.push(u[0]);
    }
    document.getElementById('shown').textContent =
      order.length + ' of ' + site.units.length + ' units shown';
  }

  // A window of side `side` px onto cell (col, row) of an image `columns` cells wide.
  function sprite(src, col, row, cell, zoom, columns, alt) {
    const side = cell * zoom;
    const box = el('span', {class: 'sprite' + (zoom > 1 ? ' pixelated' : '')});
    box.style.width = side + 'px';
    box.style.height = side + 'px';
    const img = el('img', {src: src, alt: alt, decoding: 'async'});
    img.style.width = columns * side + 'px';
    img.style.left = -col * side + 'px';
    img.style.top = -row * side + 'px';
    box.appendChild(img);
    return box;
  }

  function picture(row, image, zoom, alt) {
    const k = Math.floor(row / site.block);
    const c = row % site.block;
    const col = (c % site.columns) * site.per_unit + image;
    return sprite(fill(site.paths.full, 'k', k), col, Math.floor(c / site.columns),
      site.size, zoom, site.columns * site.per_unit, alt);
  }

  function neighbours(unit) {
    let list = order.includes(unit) ? order : site.units.map((u) => u[0]);
    const i = list.indexOf(unit);
    return [i > 0 ? list[i - 1] : null, i >= 0 && i < list.length - 1 ? list[i + 1] : null];
  }

  function link(unit, label, id) {
    const a = el('a', {id: id, href: unit === null ? '#' : '#unit-' + unit}, label);
    if (unit === null) a.className = 'off';
    return a;
  }

  function player(u) {
    const S = site.snapshots;
    const box = el('div', {class: 'player', id: 'player'});
    const strip = sprite(fill(site.paths.snapshots, 'unit', u[0]), 0, 0, site.size,
      site.zoom, S, 'snapshots of unit ' + u[0]);
    const frames = strip.querySelector('img');
    const controls = el('div', {class: 'player-controls'});
    const play = el('button', {type: 'button', id: 'play'}, 'pause');
    const range = el('input', {type: 'range', id: 'frame', min: 0, max: S - 1, value: 0});
    const label = el('span', {id: 'frame-step'});
    controls.append(play, range, label);
    box.append(el('span', {}, 'optimization, snapshot every ' + site.snapshot_every +
      ' steps'), strip, controls);
    function show(s) {
      range.value = s;
      frames.style.left = -s * site.size * site.zoom + 'px';
      const step = (s + 1) * site.snapshot_every;
      label.textContent = 'step ' + step + ' of ' + site.steps;
      const marker = document.querySelector('.plot .marker');
      if (marker && site.steps > 1) {
        const [l, , r] = site.plot_box;
        marker.style.left = (100 * (l + (r - l) * (step - 1) / (site.steps - 1))) + '%';
      }
    }
    function tick() { show((Number(range.value) + 1) % S); }
    function toggle(on) {
      clearInterval(timer);
      timer = on ? setInterval(tick, 160) : null;
      play.textContent = on ? 'pause' : 'play';
    }
    play.addEventListener('click', () => toggle(timer === null));
    range.addEventListener('input', () => { toggle(false); show(Number(range.value)); });
    return [box, () => { show(0); toggle(true); }];
  }

  function plot(u) {
    const fig = el('figure', {class: 'plot'});
    fig.appendChild(el('img', {id: 'unit-plot', src: fill(site.paths.plot, 'unit', u[0]),
      alt: 'objective of unit ' + u[0] + ' over the steps'}));
    if (site.snapshots) {
      const [, b, , t] = site.plot_box;
      const marker = el('span', {class: 'marker'});
      marker.style.top = (100 * (1 - t)) + '%';
      marker.style.height = (100 * (t - b)) + '%';
      fig.appendChild(marker);
    }
    return fig;
  }

  function card(unit) {
    const u = byUnit.get(unit);
    const [prev, next] = neighbours(unit);
    const box = el('div', {class: 'unit-card'});
    const nav = el('nav', {class: 'unit-nav'});
    nav.append(link(prev, '\u2190 previous', 'prev'), el('a', {href: '#', id: 'close'},
      'close (Esc)'), link(next, 'next \u2192', 'next'));
    box.append(nav, el('h2', {id: 'unit-title'}, site.layer + ' \u00b7 unit ' + unit));
    if (!u) {
      box.appendChild(el('p', {class: 'failure'}, 'unit ' + unit + ' is not in this layer'));
      return [box, null];
    }
    if (u[3] !== null) {
      box.appendChild(el('p', {class: 'failure', id: 'unit-failure'}, 'failed: ' + u[3]));
      return [box, null];
    }
    const value = u[1] === null ? 'not finite' : String(u[1]);
    box.appendChild(el('p', {id: 'unit-objective'}, 'final objective ' + value));
    const pictures = el('div', {class: 'pictures'});
    const full = el('div', {id: 'unit-picture'});
    full.appendChild(picture(u[2], 0, site.zoom, 'unit ' + unit));
    if (site.per_unit > 1) {
      const diversity = el('div', {class: 'diversity', id: 'diversity'});
      for (let b = 0; b < site.per_unit; b++) {
        diversity.appendChild(picture(u[2], b, 1, 'unit ' + unit + ', image ' + (b + 1)));
      }
      full.appendChild(diversity);
    }
    pictures.appendChild(full);
    let start = null;
    if (site.snapshots) {
      const [box2, begin] = player(u);
      pictures.appendChild(box2);
      start = begin;
    }
    box.appendChild(pictures);
    if (site.plots && site.steps) box.appendChild(plot(u));
    return [box, start];
  }

  function current() {
    const m = /^#unit-(\d+)$/.exec(location.hash);
    return m ? Number(m[1]) : null;
  }

  function route() {
    clearInterval(timer);
    timer = null;
    grid.querySelectorAll('a.unit.current').forEach((a) => a.classList.remove('current'));
    const unit = current();
    view.replaceChildren();
    view.hidden = unit === null;
    if (unit === null) return;
    const [box, start] = card(unit);
    view.appendChild(box);
    if (start) start();
    const cell = cells.get(unit);
    if (cell) cell.classList.add('current');
  }

  document.addEventListener('keydown', (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey || e.target.closest('input, select, textarea')) return;
    const unit = current();
    if (unit === null) return;
    const [prev, next] = neighbours(unit);
    const to = e.key === 'ArrowLeft' ? prev : e.key === 'ArrowRight' ? next : undefined;
    if (to !== undefined) {
      e.preventDefault();
      if (to !== null) location.hash = '#unit-' + to;
    } else if (e.key === 'Escape') {
      location.hash = '';
    }
  });
  view.addEventListener('click', (e) => { if (e.target === view) location.hash = ''; });
  sort.addEventListener('change', () => { arrange(); route(); });
  failedOnly.addEventListener('change', () => { arrange(); route(); });
  window.addEventListener('hashchange', route);
  arrange();
  route();
})();
"""
