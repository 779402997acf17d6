"""What a sweep varied: the config keys whose values differ between its runs (`varied_params`),
their short names for table headers (`lr`, `latent`), and what the report's plots put on x (`x_axis`).

A run's parameters are its command line's overrides (summary.json's `overrides`, else
`.hydra/overrides.yaml`: what a grid sweep set, or the values an Optuna trial drew) over the
scalars of its resolved config (summary.json's `config`). When any run has overrides, the keys
of the overrides are the candidates (an interpolated copy of a value, e.g. data.seed: ${seed},
is no parameter of its own); otherwise the config's. A key is varied when its runs hold two or
more values. Depth and seed have Table 1 columns of their own, so a key whose values are the
runs' depths or seeds adds no column, and neither does a copy of another varied key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from resvae.sweep.runs import RunRecord, integer

# readable headers (the job folder names of resvae.run.config use the same for latent_dim, train_size)
SHORT_NAMES = {
    "latent_dim": "latent",
    "train_size": "images",
    "kl_warmup_steps": "kl warm-up",
    "learning_rate": "lr",
    "batch_size": "batch",
    "weight_decay": "wd",
}
OWN_COLUMNS = ("depth", "seed")  # summary.json fields with a Table 1 column of their own
# names of the table's (and report.csv's) own columns, which a parameter's header must not take
RESERVED = (*OWN_COLUMNS, "kind", "run", "network", "n_seeds", "layers", "params", "epochs", "status")
# a positive numeric parameter spanning this many decades (1 when not all whole) gets a log axis
LOG_DECADES = 2.0


@dataclass(frozen=True)
class Param:
    """A varied key: `key` (dotted), `short` (the header), its distinct values in order."""

    key: str
    short: str
    values: tuple[Any, ...]

    @property
    def column(self) -> str:
        """The key of its cells in a table row."""
        return f"param:{self.key}"

    @property
    def numeric(self) -> bool:
        return all(_is_number(v) for v in self.values)

    @property
    def integral(self) -> bool:
        return self.numeric and all(float(v).is_integer() for v in self.values)

    @property
    def log(self) -> bool:
        """Whether its values span decades (a learning rate: 1e-4 to 1e-2): a log axis."""
        if not self.numeric or min(self.values) <= 0:
            return False
        decades = math.log10(max(self.values) / min(self.values))
        return decades >= (LOG_DECADES if self.integral else 1.0)


def parse_value(text: str) -> Any:
    """An override's value as a number, bool, None or string (Hydra's grammar, simply)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() in ("null", "none"):
        return None
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if kind is int or math.isfinite(value) else text
    return text


def parsed_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`key=value` overrides as {key: value}; `+`/`++`/`~` prefixes dropped, hydra.* left out."""
    found: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            continue
        key, value = item.split("=", 1)
        key = key.lstrip("+~").strip()
        if key and key != "hydra" and not key.startswith("hydra."):
            found[key] = parse_value(value)
    return found


def flat_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """The scalars of a nested config as {dotted key: value} (lists are left out)."""
    if not isinstance(config, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_config(value, name + "."))
        elif value is None or isinstance(value, (str, int, float, bool)):
            out[name] = value
    return out


def run_params(run: RunRecord) -> tuple[dict[str, Any], list[str]]:
    """(a run's parameters: its config's scalars with its overrides over them, its override keys)."""
    overrides = parsed_overrides(run.overrides)
    return {**flat_config(run.summary.get("config")), **overrides}, list(overrides)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _canon(value: Any) -> tuple[str, Any]:
    """Equal for equal values (128 and 128.0), unequal for True and 1."""
    if isinstance(value, bool) or value is None:
        return ("c", value)
    return ("n", float(value)) if _is_number(value) else ("s", str(value))


def _same(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether two columns hold the same values wherever both are known (and are known somewhere)."""
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return bool(both) and all(_canon(x) == _canon(y) for x, y in both)


def varied_params(runs: Sequence[RunRecord]) -> list[Param]:
    """The keys whose values differ between `runs` (see the module's docstring), in the order
    of their first override (or of the config)."""
    params = [run_params(run) for run in runs]
    override_keys = list(dict.fromkeys(k for _, keys in params for k in keys))
    candidates = override_keys or list(dict.fromkeys(k for values, _ in params for k in values))
    own = [[integer(run.summary.get(key)) for run in runs] for key in OWN_COLUMNS]
    kept: dict[str, list[Any]] = {}
    for key in candidates:
        column = [values.get(key) for values, _ in params]
        distinct = {_canon(v): v for v in column if v is not None}
        if len(distinct) < 2 or any(_same(column, other) for other in [*own, *kept.values()]):
            continue
        kept[key] = column
    names = short_names(kept, reserved=RESERVED)
    return [Param(key, names[key], _ordered(column)) for key, column in kept.items()]


def _ordered(column: Iterable[Any]) -> tuple[Any, ...]:
    distinct = list({_canon(v): v for v in column if v is not None}.values())
    if all(_is_number(v) for v in distinct):
        return tuple(sorted(distinct))
    return tuple(sorted(distinct, key=lambda v: str(v)))


def short_names(keys: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """Each dotted key by its shortest readable tail (`model.optimizer.lr` -> `lr`,
    `model.arch.latent_dim` -> `latent`), longer where two keys (or a reserved name, such as
    Table 1's seed column beside `data.seed`) would read the same."""
    keys, reserved = list(keys), set(reserved)
    names: dict[str, str] = {}
    for key in keys:
        parts = len(key.split("."))
        for n in range(1, parts + 1):
            name = _tail(key, n)
            if name not in reserved and all(_tail(other, n) != name for other in keys if other != key):
                break
        else:
            name = key if key not in reserved else f"config.{key}"
        names[key] = name
    return names


def _tail(key: str, n: int) -> str:
    tail = ".".join(key.split(".")[-n:])
    return SHORT_NAMES.get(tail, tail) if n == 1 else tail


def param_label(row: Mapping[str, Any], params: Sequence[Param]) -> str:
    """`lr=0.001, latent=128`: a row's varied parameters (as in a plot's legend)."""
    return ", ".join(f"{p.short}={format_param(row.get(p.column))}" for p in params)


def format_param(value: Any) -> str:
    if value is None:
        return "–"
    if _is_number(value):
        return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------------- plots' x
@dataclass(frozen=True)
class Axis:
    """What the report's plots put on x: `key` of the rows' cells, `short` (in titles and file
    names), `label` (the axis's)."""

    key: str
    short: str
    label: str
    log: bool = False
    ticks: bool = False  # a tick at every value (few whole numbers)

    @property
    def name(self) -> str:
        return file_name(self.short)


def x_axis(rows: Sequence[Mapping[str, Any]], params: Sequence[Param]) -> Axis | None:
    """Depth when the runs' depths differ; else the first numeric varied parameter (log scale
    when it spans decades); None when nothing numeric varies (the plots then show each run)."""
    runs = [r for r in rows if r["kind"] == "run"]
    if len({r["depth"] for r in runs if r["depth"] is not None}) >= 2:
        return Axis("depth", "depth", "depth", ticks=True)
    for p in params:
        if p.numeric:
            label = p.short if p.short == p.key else f"{p.short} ({p.key})"
            if p.log:
                label += ", log scale"
            return Axis(p.column, p.short, label, p.log, p.integral and len(p.values) <= 12)
    return None


def file_name(text: str) -> str:
    """`text` as a file name's part: `kl warm-up` -> `kl_warm_up`."""
    return "".join(c if c.isalnum() else "_" for c in text).strip("_") or "param"
