"""The study's "Table 1" of a sweep: its rows, their cells as text, and the table as Markdown and CSV.

Columns: the run, what the sweep varied besides depth and seed (resvae/sweep/varied.py: `lr`,
`latent`, ...), depth, seed, layers, parameters, epochs, training time, minimum training and
validation loss, test bits/dim (ELBO and importance-weighted), active units, images/s and status,
with their units; one row per run (`run_row`), sorted by depth, the varied parameters, then seed,
plus a mean ± sample-std row per depth (and values of the varied parameters) wherever two or more
finished runs of it differ in seed (`table_rows`). Bits/dim that is no normalized likelihood of the
8-bit images is marked with a dagger and the `NOT_LIKELIHOOD` footnote.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from resvae.sweep.runs import RunRecord, integer, number
from resvae.sweep.varied import Param, format_param, run_params, varied_params

NOT_LIKELIHOOD = "† not a likelihood: these runs' loss is not a normalized likelihood of the 8-bit images \
(bpd_is_likelihood is false, e.g. the study's Bernoulli cross-entropy), so their bits/dim only compares \
with each other."

Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str = ""  # format spec of a number; "" for text, "M" for millions
    stat: bool = True  # averaged in the aggregate rows


COLUMNS = (
    Column("run", "run", stat=False),
    Column("depth", "depth", "d", stat=False),
    Column("seed", "seed", "d", stat=False),
    Column("layers", "layers", "d"),
    Column("params", "parameters", "M"),
    Column("epochs", "epochs", "d"),
    Column("train_hours", "training time (hours)", ".3f"),
    Column("min_train_loss", "min train loss (nats/image)", ".5g"),
    Column("min_val_loss", "min val loss (nats/image)", ".5g"),
    Column("test_bpd", "test bits/dim (ELBO)", ".3f"),
    Column("test_bpd_iw", "test bits/dim (IW)", ".3f"),
    Column("active_units", "active units", "d"),
    Column("images_per_second", "images/s", ".0f"),
    Column("status", "status", stat=False),
)
STATS = [c.key for c in COLUMNS if c.stat]
BPD_COLUMNS = ("test_bpd", "test_bpd_iw")
CSV_FIELDS = [
    "kind",
    "run",
    "network",
    "depth",
    "seed",
    "n_seeds",
    *[k for key in STATS for k in (key, f"{key}_std")],
    "bpd_is_likelihood",
    "status",
    "error",
]


def table_columns(params: Sequence[Param] = ()) -> list[Column]:
    """`COLUMNS` with a column per varied parameter after the run's name."""
    own = [Column(p.column, p.short, "p", stat=False) for p in params]
    return [COLUMNS[0], *own, *COLUMNS[1:]]


def csv_fields(params: Sequence[Param] = ()) -> list[str]:
    """`CSV_FIELDS` with a field per varied parameter (its short name) after the run's name."""
    return [*CSV_FIELDS[:2], *(p.short for p in params), *CSV_FIELDS[2:]]


# ---------------------------------------------------------------------------------- rows
def run_row(run: RunRecord, params: Sequence[Param] = ()) -> Row:
    """A run's table row: numbers as floats/ints or None, eval.json preferred for bits/dim, the
    varied parameters' values under `Param.column`."""
    s = run.summary
    # eval.json may hold another split (resvae-eval --split val|train): only test numbers go in test columns
    ev = run.eval if run.eval and run.eval.get("split", "test") == "test" else {}
    curve_min = lambda curve: min((v for _, v in curve), default=None)  # noqa: E731
    seconds = number(s.get("train_seconds"))
    likelihood = s.get("bpd_is_likelihood")
    values = run_params(run)[0] if params else {}
    return {
        **{p.column: values.get(p.key) for p in params},
        "kind": "run",
        "run": run.name,
        "network": s.get("network") if isinstance(s.get("network"), str) else None,
        "width": integer(s.get("width")),
        "depth": integer(s.get("depth")),
        "seed": integer(s.get("seed")),
        "n_seeds": None,
        "layers": integer(s.get("layers")),
        "params": integer(s.get("params")),
        "epochs": integer(s.get("epochs")),
        "train_hours": seconds / 3600 if seconds is not None else None,
        "min_train_loss": _first(number(s.get("min_train_loss")), curve_min(run.train_curve)),
        "min_val_loss": _first(
            number(s.get("min_val_loss")), curve_min(run.val_curve), number(s.get("best_val_loss"))
        ),
        "test_bpd": _first(number(ev.get("bpd")), number(s.get("test_bpd"))),
        "test_bpd_iw": _first(number(ev.get("bpd_iw")), number(s.get("test_bpd_iw"))),
        "active_units": integer(ev.get("active_units")),
        "images_per_second": number(s.get("images_per_second")),
        "bpd_is_likelihood": likelihood if isinstance(likelihood, bool) else None,
        "status": run.status,
        "error": run.error,
    }


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def table_rows(runs: Sequence[RunRecord], params: Sequence[Param] | None = None) -> list[Row]:
    """Run rows sorted by depth, the varied parameters (`varied_params` when None), then seed
    (broken and depth-less runs last); after the runs of one depth (and network, width and
    values of the varied parameters), a "mean" row over its finished runs when two or more of them
    differ in seed: each statistic's mean, its sample std as `<key>_std`, and `n_seeds`."""
    params = varied_params(runs) if params is None else params
    rows = sorted((run_row(r, params) for r in runs), key=_sort_key)
    out: list[Row] = []
    for i, row in enumerate(rows):
        out.append(row)
        last_of_group = i + 1 == len(rows) or _group(rows[i + 1]) != _group(row)
        if last_of_group and row["depth"] is not None:
            members = [r for r in rows if _group(r) == _group(row) and r["status"] == "finished"]
            if len({r["seed"] for r in members}) >= 2:
                out.append(aggregate_row(members))
    return out


def _sort_key(row: Row) -> tuple:
    absent = lambda v: (v is None, v if v is not None else 0)  # noqa: E731
    return (
        row["status"] == "broken",
        *absent(row["depth"]),
        _group(row)[1:],
        *absent(row["seed"]),
        row["run"],
    )


def _group(row: Row) -> tuple:
    """Depth, network, width and the varied parameters' values (None first, numbers by value)."""
    varied = [(v is not None, isinstance(v, str), v if isinstance(v, str) else v or 0) for v in _params(row)]
    return (row["depth"], row["network"] or "", row["width"] or 0, *varied)


def _params(row: Row) -> list:
    return [row[k] for k in row if k.startswith("param:")]


def aggregate_row(members: Sequence[Row]) -> Row:
    """The "mean" row of one depth's finished runs (see `table_rows`)."""
    first = members[0]
    label = f"depth {first['depth']}" + (f" {first['network']}" if first["network"] else "")
    row: Row = {
        "kind": "mean",
        "run": f"{label}: mean ± sd over {len(members)} seeds",
        "network": first["network"],
        "width": first["width"],
        "depth": first["depth"],
        **{k: first[k] for k in first if k.startswith("param:")},
        "seed": None,
        "n_seeds": len(members),
        "bpd_is_likelihood": _all_likelihood(m["bpd_is_likelihood"] for m in members),
        "status": "",
        "error": None,
    }
    for key in STATS:
        values = [m[key] for m in members if m[key] is not None]
        row[key] = statistics.fmean(values) if values else None
        row[f"{key}_std"] = statistics.stdev(values) if len(values) >= 2 else None
        row[f"{key}_n"] = len(values)
    return row


def _all_likelihood(flags: Iterable[bool | None]) -> bool | None:
    """False when any run's bits/dim is no likelihood, True when all are, else unknown."""
    flags = list(flags)
    return False if False in flags else (True if flags and all(flags) else None)


# ---------------------------------------------------------------------------------- as text
def format_cell(row: Row, column: Column) -> str:
    """A cell as text: "mean ± sd" in aggregate rows, a dagger on bits/dim that is no likelihood."""
    value = row.get(column.key)
    if column.key == "seed" and row["kind"] == "mean":
        return f"n={row['n_seeds']}"
    if value is None:
        return "–"
    if column.fmt == "p":
        return format_param(value)
    if not column.fmt:
        return str(value)
    text = _format_number(value, column.fmt)
    std = row.get(f"{column.key}_std")
    if std:  # a constant column (layers, parameters) shows no "± 0"
        text += f" ± {_format_number(std, column.fmt)}"
    if row["kind"] == "mean" and column.stat and row[f"{column.key}_n"] < row["n_seeds"]:
        text += f" (n={row[f'{column.key}_n']})"
    if column.key in BPD_COLUMNS and row.get("bpd_is_likelihood") is False:
        text += "†"
    return text


def _format_number(value: float, fmt: str) -> str:
    if fmt == "M":
        return f"{value / 1e6:.2f}M"
    if fmt == "d":
        return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
    return format(value, fmt)


def any_not_likelihood(rows: Iterable[Row]) -> bool:
    """Whether the table needs the `NOT_LIKELIHOOD` footnote."""
    return any(r["bpd_is_likelihood"] is False for r in rows)


def markdown_table(rows: Sequence[Row], params: Sequence[Param] = ()) -> str:
    """The table as GitHub Markdown, aggregate rows in bold, with the likelihood footnote."""
    esc = lambda text: text.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    columns = table_columns(params)
    lines = [
        "| " + " | ".join(esc(c.header) for c in columns) + " |",
        "|" + "|".join("---" if not c.fmt else "--:" for c in columns) + "|",
    ]
    for row in rows:
        cells = [esc(format_cell(row, c)) for c in columns]
        if row["kind"] == "mean":
            cells = [f"**{cell}**" if cell else "" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if any_not_likelihood(rows):
        lines += ["", NOT_LIKELIHOOD]
    return "\n".join(lines)


def csv_text(rows: Sequence[Row], params: Sequence[Param] = ()) -> str:
    """The table as CSV with the `csv_fields` columns: numbers unformatted, stds in columns of their
    own, each varied parameter under its short name."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_fields(params))
    writer.writerows(csv_values(row, params) for row in rows)
    return out.getvalue()


def csv_values(row: Row, params: Sequence[Param] = ()) -> list[Any]:
    """A row's values in the order of `csv_fields` (None for an empty cell)."""
    keys = [*CSV_FIELDS[:2], *(p.column for p in params), *CSV_FIELDS[2:]]
    return [row.get(k) for k in keys]
