"""The report page's inline CSS and JavaScript (no external resource of any kind)."""

from __future__ import annotations

CSS = """
:root {
  --fg: #1f2328; --muted: #6a737d; --line: #e3e6ea; --bg: #f6f7f9; --card: #ffffff;
  --accent: #4C78A8; --good: #1b7f3b; --bad: #c62828; --warn: #8d6e00;
}
* { box-sizing: border-box; }
html { scroll-behavior: smooth; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
        "Noto Sans", "Liberation Sans", sans-serif;
}
header.top {
  background: linear-gradient(135deg, #27415f, #4C78A8); color: #fff; padding: 22px 32px 18px;
}
header.top h1 { margin: 0 0 4px; font-size: 24px; font-weight: 650; letter-spacing: -0.01em; }
header.top .sub { opacity: 0.85; font-size: 14px; }
nav.toc {
  position: sticky; top: 0; z-index: 10; background: rgba(255,255,255,0.96);
  border-bottom: 1px solid var(--line); padding: 8px 32px; font-size: 13px;
  display: flex; flex-wrap: wrap; gap: 4px 16px;
}
nav.toc a { color: var(--accent); text-decoration: none; white-space: nowrap; }
nav.toc a:hover { text-decoration: underline; }
main { max-width: 1280px; margin: 0 auto; padding: 20px 32px 40px; }
section.card, .glance {
  background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 18px 22px; margin: 0 0 18px; box-shadow: 0 1px 2px rgba(0,0,0,0.03);
}
.glance { border-left: 5px solid var(--accent); }
.glance h2 { margin-top: 0; }
.glance ul { margin: 0; padding-left: 20px; }
.glance li { margin: 5px 0; }
h2 { font-size: 19px; margin: 0 0 6px; font-weight: 650; }
h3 { font-size: 15px; margin: 14px 0 6px; }
p.lead { color: var(--muted); margin: 0 0 12px; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       background: #f0f2f4; padding: 1px 4px; border-radius: 4px; word-break: break-all; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
         gap: 10px; margin: 6px 0 12px; }
.tile { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px;
        background: #fbfcfd; }
.tile .label { font-size: 12px; color: var(--muted); text-transform: uppercase;
               letter-spacing: 0.04em; }
.tile .value { font-size: 24px; font-weight: 650; margin: 2px 0; }
.tile .detail { font-size: 12px; color: var(--muted); }
.tile.good .value { color: var(--good); }
.tile.muted .value { color: var(--muted); }
.note { border-radius: 6px; padding: 8px 12px; margin: 8px 0; font-size: 13px;
        background: #eef4fb; border: 1px solid #cfe0f3; }
.note.warn { background: #fff8e1; border-color: #f3d98b; }
figure { margin: 10px 0 14px; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; max-width: 820px; }
.cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr));
        gap: 18px; align-items: start; }
.tablewrap { overflow-x: auto; margin: 8px 0 14px; }
table.data { border-collapse: collapse; font-size: 12.5px; font-variant-numeric: tabular-nums; }
table.data caption { text-align: left; font-weight: 600; padding: 0 0 6px; color: var(--fg); }
table.data th, table.data td { padding: 4px 9px; border-bottom: 1px solid var(--line);
                               text-align: right; white-space: nowrap; }
table.data th:first-child, table.data td:first-child { text-align: left; }
table.data.wrap td { white-space: normal; text-align: left; max-width: 360px; }
table.data thead th { background: #f3f5f7; font-weight: 600; position: relative;
                      vertical-align: bottom; }
table.sortable thead th { white-space: normal; min-width: 3.5em; }
table.data.wrap th { text-align: left; }
table.data thead tr.groups th { background: #e9edf2; text-align: center; font-size: 11.5px;
                                color: var(--muted); text-transform: uppercase; }
table.sortable thead tr:last-child th { cursor: pointer; user-select: none; }
table.sortable thead tr:last-child th:hover { background: #e6ebf1; }
table.sortable th.asc::after { content: " \\25B2"; font-size: 9px; }
table.sortable th.desc::after { content: " \\25BC"; font-size: 9px; }
table.data tbody tr:hover td { filter: brightness(0.97); }
td.good, td.t-good { color: var(--good); font-weight: 600; }
td.t-bad { color: var(--bad); font-weight: 600; }
td.t-warn { color: var(--warn); }
td.t-muted { color: var(--muted); }
td.t-strong { font-weight: 600; }
details { margin: 8px 0; border: 1px solid var(--line); border-radius: 8px; padding: 6px 12px;
          background: #fcfcfd; }
details > summary { cursor: pointer; font-weight: 600; padding: 2px 0; }
details[open] > summary { margin-bottom: 6px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 12px; }
.gcard { border: 1px solid var(--line); border-radius: 8px; padding: 8px; background: #fff;
         display: flex; gap: 8px; }
.gcard img { height: 150px; width: auto; border-radius: 4px; flex: none; }
.gcard .gtext { font-size: 11.5px; min-width: 0; }
.gcard .gname { font-weight: 600; font-size: 12px; }
.gcard .gsub { color: var(--muted); margin-bottom: 3px; overflow-wrap: anywhere; }
.gcard ul { margin: 0; padding: 0; list-style: none; }
.gcard li.w { color: var(--bad); }
.gcard li.w::before { content: "\\2717  "; }
.gcard li.r { color: var(--good); }
.gcard li.r::before { content: "\\2713  "; }
ul.bullets { padding-left: 20px; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 10px 0 30px; }
@media print {
  nav.toc { display: none; }
  section.card, .glance { break-inside: avoid; box-shadow: none; }
  details { border: none; }
}
"""

# Sortable tables: click a header of the last header row; numbers sort numerically (from
# data-sort), missing values last; a second click reverses.
JS = """
(function () {
  function key(td) {
    if (!td) return null;
    var v = td.getAttribute('data-sort');
    if (v === null) v = td.textContent.trim();
    if (v === '' || v === '\\u2013') return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.tHead.rows[table.tHead.rows.length - 1].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.title = (th.title ? th.title + ' \\u2014 ' : '') + 'click to sort';
      th.addEventListener('click', function () {
        var asc = !th.classList.contains('asc');
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove('asc', 'desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === null && y === null) return 0;
          if (x === null) return 1;
          if (y === null) return -1;
          var c = (typeof x === 'number' && typeof y === 'number') ? x - y
                : String(x).localeCompare(String(y));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""
