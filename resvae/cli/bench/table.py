"""The rows as a Markdown table, with the ratios between loops of the same case."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    "case", "depth", "batch", "loop", "math", "img_s", "ms_step", "mfu", "warmup_s", "epoch_50k_s",
    "val_fraction", "peak_mem_gib",
)  # fmt: skip
# (numerator, denominator): what each comparison shows
RATIOS = (
    ("step", "bare"),  # the project's own step cost over a minimal loop
    ("step-captured", "step"),  # what capture buys in the loop without Lightning
    ("lightning", "bare"),
    ("lightning", "step"),  # Lightning's own cost around the project's step
    ("lightning-captured", "step"),
    ("lightning-captured", "step-captured"),
    ("lightning-captured", "bare"),
)


def ratio(rows: dict[str, dict[str, Any]], a: str, b: str) -> float | None:
    """img/s of loop `a` over loop `b`, or None when either did not run."""
    if "img_s" in rows.get(a, {}) and "img_s" in rows.get(b, {}):
        return rows[a]["img_s"] / rows[b]["img_s"]
    return None


def by_case(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, dict[str, Any]]]:
    groups: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if "depth" in r:
            groups.setdefault((r.get("case", ""), r["depth"], r["batch"]), {})[r["loop"]] = r
    return groups


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "img_s" and "not_run" in row:
        return f"not run ({row['not_run']})"
    value = row.get(column)
    return "" if value is None else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = COLUMNS if any(r.get("case") for r in rows) else COLUMNS[1:]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_cell(r, c) for c in columns) + " |" for r in rows if r["loop"] != "data_path"
    ]
    data = [r for r in rows if r["loop"] == "data_path"]
    if data:
        lines.append(f"\ndata path alone: {data[0]['img_s']:,.0f} img/s on {data[0]['device']}")
    for (case, depth, batch), got in by_case(rows).items():
        ratios = [
            f"{a} / {b} = {value:.2f}x img/s, {got[a]['ms_step'] / got[b]['ms_step']:.3f}x ms/step"
            for a, b in RATIOS
            if (value := ratio(got, a, b)) is not None
        ]
        if ratios:
            where = f"{case} (depth {depth}, batch {batch})" if case else f"depth {depth} batch {batch}"
            lines.append(f"{where}: " + "; ".join(ratios))
    return "\n".join(lines)
