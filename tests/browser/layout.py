"""Look at a page's layout in headless Chromium: overflow, overlapping figures, legend colours.

::

    with Chromium() as browser:
        problems = look(browser, Path("report.html"), shots=Path("runs/x/screenshots"))
        assert problems == [], "\\n".join(problems)

:data:`LAYOUT_JS` measures, in the page itself:

- **overflow**: the page is wider than the viewport (``scrollWidth``), or an element's right
  edge passes the viewport without a scrolling box around it that clips it;
- **overlap**: the box of a figure (its ``div.plot`` joined with the SVG plotly drew, which
  may be taller than a squeezed div) intersects another figure or a heading (``h1``-``h3``);
- **legend**: a trace drawn in a colour that no legend entry of its figure shows (plotly's
  own colour cycling over traces whose legend entry is shown once);
- **axes**: an axis that shows tick labels for some trace but has no title (the pages put
  the unit in the title: ``TTFT (ms)``).

:func:`look` checks at each width, then again after a resize to a narrower window and back,
collects console errors, and writes one full-page screenshot per width.
"""

from __future__ import annotations

import json
from pathlib import Path

from .chromium import Chromium

#: widths a page must fit (laptop, desktop)
WIDTHS: tuple[int, ...] = (1280, 1920)
#: the window a page is squeezed to and back, to catch figures that do not follow a resize
RESIZE_TO = 1000
#: seconds plotly gets to relayout after a resize
SETTLE_S = 0.4

LAYOUT_JS = r"""
(() => {
  const vw = document.documentElement.clientWidth;
  const out = {scroll_width: document.documentElement.scrollWidth, viewport: vw, overflow: [], overlap: [], legend: []};
  const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
      (el.classList.length ? '.' + Array.from(el.classList).join('.') : '') +
      (el.closest('section[id]') ? ' in section#' + el.closest('section[id]').id : '');
  const clipped = (el) => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox === 'auto' || ox === 'scroll' || ox === 'hidden') return a.getBoundingClientRect().right <= vw + 1;
    }
    return false;
  };
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('div.plot') && !el.matches('div.plot')) continue;  // plotly clips its own layers
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    const up = el.parentElement && el.parentElement !== document.body ? el.parentElement.getBoundingClientRect().right : 0;
    if (r.right > vw + 1 && up <= vw + 1 && !clipped(el)) out.overflow.push(name(el) + ' right edge at ' + Math.round(r.right) + ' px');
  }
  const box = (el) => {
    const r = el.getBoundingClientRect(), y = window.scrollY;
    let b = {l: r.left, t: r.top + y, r: r.right, b: r.bottom + y};
    for (const svg of el.querySelectorAll('svg.main-svg')) {
      const s = svg.getBoundingClientRect();
      b = {l: Math.min(b.l, s.left), t: Math.min(b.t, s.top + y), r: Math.max(b.r, s.right), b: Math.max(b.b, s.bottom + y)};
    }
    return b;
  };
  const hit = (a, b) => a.l < b.r - 1 && b.l < a.r - 1 && a.t < b.b - 1 && b.t < a.b - 1;
  const plots = Array.from(document.querySelectorAll('div.plot')).map(el => [el, box(el)]);
  const heads = Array.from(document.querySelectorAll('h1, h2, h3')).map(el => [el, box(el)]);
  plots.forEach(([p, pb], i) => {
    plots.slice(i + 1).forEach(([q, qb]) => { if (hit(pb, qb)) out.overlap.push(name(p) + ' overlaps ' + name(q)); });
    heads.forEach(([h, hb]) => { if (hit(pb, hb)) out.overlap.push(name(p) + ' covers heading "' + h.textContent.trim().slice(0, 60) + '"'); });
  });
  const colour = (t) => {
    for (const c of [t.line && t.line.color, t.marker && t.marker.color]) if (typeof c === 'string') return c.toLowerCase().replace(/\s/g, '');
    return null;
  };
  const kinds = new Set(['scatter', 'scattergl', 'bar', 'histogram', 'box', 'violin']);
  for (const [p] of plots) {
    const data = (p._fullData || []).filter(t => kinds.has(t.type) && t.visible === true);
    const legend = p._fullLayout && p._fullLayout.showlegend;
    if (!legend) continue;
    const shown = new Set(data.filter(t => t.showlegend).map(colour));
    for (const t of data) {
      const c = colour(t);
      if (c && !shown.has(c)) out.legend.push(name(p) + ': trace "' + (t.name || t.index) + '" drawn in ' + c + ', a colour in no legend entry');
    }
  }
  // every axis that shows tick labels has a title (with its unit: the pages put units in the titles)
  out.axes = [];
  for (const [p] of plots) {
    const fl = p._fullLayout;
    if (!fl) continue;
    for (const key of Object.keys(fl)) {
      if (!/^[xy]axis\d*$/.test(key)) continue;
      const ax = fl[key];
      if (!ax || ax.visible === false || ax.showticklabels === false || !ax._id) continue;
      // an axis no trace uses is not drawn (make_subplots creates one per cell)
      const used = (p._fullData || []).some(t => (t.xaxis === ax._id) || (t.yaxis === ax._id));
      if (!used) continue;
      // shared x axes: only the bottom one of a column carries the title
      if (ax.matches || (ax._id[0] === 'x' && ax.anchor && fl[key].overlaying)) continue;
      // plotly fills an empty title with its editable placeholder ("Click to enter Y axis title")
      let title = ax.title && ax.title.text ? String(ax.title.text).trim() : '';
      if (title.startsWith('Click to enter')) title = '';
      const shared = ax._id[0] === 'x' && Object.keys(fl).some(k => /^xaxis\d*$/.test(k) && fl[k] && fl[k].matches === ax._id && fl[k].title && fl[k].title.text && !String(fl[k].title.text).startsWith('Click to enter'));
      if (!title && !shared) out.axes.push(name(p) + ': axis ' + ax._id + ' has no title');
    }
  }
  return JSON.stringify(out);
})()
"""


def measure(browser: Chromium, session: str) -> dict[str, object]:
    """The layout facts of the open tab (see :data:`LAYOUT_JS`)."""
    return json.loads(browser.evaluate(session, LAYOUT_JS))


def problems_of(facts: dict[str, object], when: str) -> list[str]:
    """One line per layout problem in ``facts``, prefixed with ``when`` (e.g. ``1280 px``)."""
    out = []
    if int(facts["scroll_width"]) > int(facts["viewport"]):  # type: ignore[arg-type]
        out.append(f"{when}: page is {facts['scroll_width']} px wide in a {facts['viewport']} px viewport")
    out += [f"{when}: overflow: {m}" for m in facts["overflow"][:10]]  # type: ignore[index]
    out += [f"{when}: {m}" for m in facts["overlap"][:10]]  # type: ignore[index]
    out += [f"{when}: {m}" for m in facts["legend"][:10]]  # type: ignore[index]
    out += [f"{when}: {m}" for m in facts.get("axes", [])[:10]]  # type: ignore[union-attr]
    return out


def look(browser: Chromium, page: Path, shots: Path | None = None, widths: tuple[int, ...] = WIDTHS) -> list[str]:
    """Every layout problem and console error of ``page`` at ``widths``, before and after a resize.

    Args:
        browser: a started :class:`Chromium`.
        page: the HTML file.
        shots: folder for ``<page stem>-<width>.png`` full-page screenshots (none when None).
        widths: viewport widths to check.
    """
    found: list[str] = []
    with browser.page(page, width=widths[0]) as (session, errors):
        for w in widths:
            browser.set_viewport(session, w, settle_s=SETTLE_S)
            found += problems_of(measure(browser, session), f"{w} px")
            browser.set_viewport(session, RESIZE_TO, settle_s=SETTLE_S)
            browser.set_viewport(session, w, settle_s=SETTLE_S)
            found += problems_of(measure(browser, session), f"{w} px after a resize to {RESIZE_TO} px and back")
            if shots is not None:
                browser.screenshot(session, shots / f"{page.stem}-{w}.png")
    found += [f"console error: {e}" for e in errors]
    return [f"{page.name}: {p}" for p in found]
