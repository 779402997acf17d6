"""The sweep report's two pages, as text: `report.md` and the static gallery `report.html`.

Both hold the runs' status counts, the table (with a line naming the varied parameters' full
keys), the plots and the failed and broken runs with their errors. The HTML page also shows each
run's latest sample and reconstruction grid, in the table's order, each run's name in the table
linking to its section. It needs no server and no network, and every link is relative
(percent-encoded), so the sweep folder can be moved.

The HTML table never widens the page: it sits in a container that scrolls sideways, a long run
name wraps (one over `NAME_LIMIT` characters is shortened, the whole name in its title), the
run column stays in view while the table scrolls, and headers wrap; so at 1,400 px the varied
parameters, test bits/dim and status are in view.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from resvae.sweep.runs import RunRecord, problems, status_counts, sweep_name
from resvae.sweep.tables import (
    NOT_LIKELIHOOD,
    Row,
    any_not_likelihood,
    format_cell,
    markdown_table,
    table_columns,
)
from resvae.sweep.varied import Param

NAME_LIMIT = 80  # characters of a run's name in the HTML table; the rest is elided, the whole in its title

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1, h2, h3, p, li, pre { overflow-wrap: anywhere; }
.table-wrap { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.4em; text-align: right; }
td { white-space: nowrap; }
tr.mean td { white-space: normal; }
th { vertical-align: bottom; font-weight: 600; min-width: 3.5em; }
th.run, td.run, td.status, th.status { text-align: left; }
th.run, td.run { position: sticky; left: 0; z-index: 1; background: inherit; white-space: normal; }
td.run .name { display: block; min-width: 10em; max-width: 20em; overflow-wrap: anywhere; }
tr { background: #fff; }
tr.mean { font-weight: bold; background: #f2f2f2; }
tr.failed, tr.broken, tr.interrupted { background: #fde8e8; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
.grids img { width: 320px; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 0.5em; }
.note { font-size: 0.9em; color: #555; }
"""


def varied_line(params: Sequence[Param], code: str = "") -> str:
    """`Varied: lr = model.optimizer.lr (5 values); ...` (keys quoted with `code`), or "" when
    the sweep varied nothing besides depth and seed."""
    named = [f"{p.short} = {code}{p.key}{code} ({len(p.values)} values)" for p in params]
    return "Varied: " + "; ".join(named) + "." if named else ""


@dataclass(frozen=True)
class SweepPages:
    """What both pages show: the sweep folder's runs, the table rows, the plots written into the
    folder and the parameters the sweep varied."""

    sweep_dir: Path
    runs: Sequence[RunRecord]
    rows: Sequence[Row]
    plots: Sequence[Path]
    params: Sequence[Param] = ()


def markdown_report(pages: SweepPages) -> str:
    """report.md: the counts, the table, the plots and the failed and broken runs."""
    sweep_dir, runs, rows, plots, params = pages.sweep_dir, pages.runs, pages.rows, pages.plots, pages.params
    title = f"# Sweep report: {sweep_name(sweep_dir)}"
    lines = [title, "", status_counts(runs), ""]
    if params:
        lines += [varied_line(params, code="`"), ""]
    lines += [markdown_table(rows, params), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({_link(p, sweep_dir)})" for p in plots] + [""]
    found = problems(runs)
    if found:
        lines += ["## Failed and broken runs", ""]
        lines += [f"- `{run.name}`: {what.replace(chr(10), ' ')}" for run, what in found] + [""]
    return "\n".join(lines)


def html_report(pages: SweepPages) -> str:
    """report.html: what report.md has, then a section per run with its image grids."""
    sweep_dir, runs, rows, plots, params = pages.sweep_dir, pages.runs, pages.rows, pages.plots, pages.params
    e = html.escape
    anchors = {run.name: f"run-{i}" for i, run in enumerate(runs)}
    columns = table_columns(params)
    full_keys = {p.column: p.key for p in params}
    head = "".join(
        f'<th class="{_css_class(c.key)}"'
        + (f' title="{e(full_keys[c.key])}"' if c.key in full_keys else "")
        + f">{e(c.header).replace('_', '_<wbr>').replace('.', '.<wbr>')}</th>"
        for c in columns
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',
        f"<title>Sweep report: {e(sweep_name(sweep_dir))}</title><style>{STYLE}</style></head><body>",
        f"<h1>Sweep report: {e(sweep_name(sweep_dir))}</h1>",
        f"<p>{e(status_counts(runs))}</p>",
        f'<p class="note">{e(varied_line(params))}</p>' if params else "",
        f'<div class="table-wrap"><table class="runs"><thead><tr>{head}</tr></thead><tbody>',
    ]
    for row in rows:
        cells = []
        for c in columns:
            text = e(format_cell(row, c)).replace(" ± ", " ±\u00a0")  # a mean row's "± sd" may wrap below
            if c.key == "run":
                name = row["run"]
                short = elide(name)
                title = f' title="{e(name)}"' if short != name else ""
                shown = e(short).replace(",", ",<wbr>")  # lines break after a comma where they can
                text = f'<span class="name"{title}>{shown}</span>'
                if row["kind"] == "run":
                    text = f'<a href="#{anchors[row["run"]]}" class="name"{title}>{shown}</a>'
            cells.append(f'<td class="{_css_class(c.key)}">{text}</td>')
        parts.append(f'<tr class="{e(row["kind"])} {e(row["status"])}">' + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div>")
    if any_not_likelihood(rows):
        parts.append(f'<p class="note">{e(NOT_LIKELIHOOD)}</p>')
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<figure><img src="{e(_link(p, sweep_dir))}" alt="{e(p.stem)}"></figure>' for p in plots]
    found = problems(runs)
    if found:
        parts.append("<h2>Failed and broken runs</h2><ul>")
        parts += [f"<li><b>{e(run.name)}</b><pre>{e(what)}</pre></li>" for run, what in found]
        parts.append("</ul>")
    parts.append("<h2>Runs</h2>")
    by_name = {run.name: run for run in runs}
    for row in rows:  # in the table's order
        if row["kind"] == "run":
            parts.append(_html_run(by_name[row["run"]], anchors[row["run"]], sweep_dir))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_run(run: RunRecord, anchor: str, sweep_dir: Path) -> str:
    e = html.escape
    facts = [f"status: {run.status}"]
    facts += [
        f"{key}: {run.summary[key]}"
        for key in ("run", "network", "depth", "seed", "epochs")
        if key in run.summary
    ]
    grids = []
    for label, png in (("samples", run.sample_png), ("reconstructions", run.recon_png)):
        if png is not None:
            caption = f"{label}, {png.stem.replace('_', ' ')}"
            grids.append(
                f'<figure><img src="{e(_link(png, sweep_dir))}" alt="{e(caption)}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    body = (
        '<div class="grids">' + "".join(grids) + "</div>" if grids else '<p class="note">no image grids</p>'
    )
    error = f"<pre>{e(run.error)}</pre>" if run.error else ""
    return f'<section id="{anchor}"><h3>{e(run.name)}</h3><p>{e("; ".join(facts))}</p>{error}{body}</section>'


def elide(name: str, limit: int = NAME_LIMIT) -> str:
    """`name`, or when longer than `limit` its start and end with "…" between, cut at commas
    (`a=1,b=2,…,z=9`) where whole `key=value` parts fit."""
    if len(name) <= limit:
        return name
    parts = name.split(",")
    head: list[str] = []
    while parts and len(",".join([*head, parts[0]])) <= limit * 0.6:
        head.append(parts.pop(0))
    tail: list[str] = []
    while parts and len(",".join([*head, "…", parts[-1], *tail])) <= limit:
        tail.insert(0, parts.pop())
    if not head or not tail:  # a part too long to keep whole
        return f"{name[: limit - 25]}…{name[-24:]}"
    return ",".join([*head, "…", *tail])


def _css_class(key: str) -> str:
    """A column's class: its key (`test_bpd`), `param` for a varied parameter's."""
    return "param" if key.startswith("param:") else key


def _link(path: Path, base: Path) -> str:
    """A relative URL from `base` to `path` (names with '=' or ',' are percent-encoded)."""
    return quote(path.relative_to(base).as_posix())
