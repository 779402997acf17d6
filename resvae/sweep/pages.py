"""The sweep report's two pages, as text: `report.md` and the static gallery `report.html`.

Both hold the runs' status counts, the table, the plots and the failed and broken runs with their
errors. The HTML page also shows each run's latest sample and reconstruction grid, in the table's
order, each run's name in the table linking to its section. It needs no server and no network,
and every link is relative (percent-encoded), so the sweep folder can be moved.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from resvae.sweep.runs import RunRecord, problems, status_counts, sweep_name
from resvae.sweep.tables import COLUMNS, NOT_LIKELIHOOD, Row, any_not_likelihood, format_cell, markdown_table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.status { text-align: left; }
tr.mean { font-weight: bold; background: #f2f2f2; }
tr.failed, tr.broken, tr.interrupted { background: #fde8e8; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
.grids img { width: 320px; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 0.5em; }
.note { font-size: 0.9em; color: #555; }
"""


def markdown_report(
    sweep_dir: Path, runs: Sequence[RunRecord], rows: Sequence[Row], plots: Sequence[Path]
) -> str:
    """report.md: the counts, the table, the plots and the failed and broken runs."""
    title = f"# Sweep report: {sweep_name(sweep_dir)}"
    lines = [title, "", status_counts(runs), "", markdown_table(rows), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({_link(p, sweep_dir)})" for p in plots] + [""]
    found = problems(runs)
    if found:
        lines += ["## Failed and broken runs", ""]
        lines += [f"- `{run.name}`: {what.replace(chr(10), ' ')}" for run, what in found] + [""]
    return "\n".join(lines)


def html_report(
    sweep_dir: Path, runs: Sequence[RunRecord], rows: Sequence[Row], plots: Sequence[Path]
) -> str:
    """report.html: what report.md has, then a section per run with its image grids."""
    e = html.escape
    anchors = {run.name: f"run-{i}" for i, run in enumerate(runs)}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',
        f"<title>Sweep report: {e(sweep_name(sweep_dir))}</title><style>{STYLE}</style></head><body>",
        f"<h1>Sweep report: {e(sweep_name(sweep_dir))}</h1>",
        f"<p>{e(status_counts(runs))}</p>",
        '<table class="runs"><thead><tr>' + "".join(f"<th>{e(c.header)}</th>" for c in COLUMNS),
        "</tr></thead><tbody>",
    ]
    for row in rows:
        cells = []
        for c in COLUMNS:
            text = e(format_cell(row, c))
            if c.key == "run" and row["kind"] == "run":
                text = f'<a href="#{anchors[row["run"]]}">{text}</a>'
            cells.append(f'<td class="{c.key}">{text}</td>')
        parts.append(f'<tr class="{e(row["kind"])} {e(row["status"])}">' + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
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


def _link(path: Path, base: Path) -> str:
    """A relative URL from `base` to `path` (names with '=' or ',' are percent-encoded)."""
    return quote(path.relative_to(base).as_posix())
