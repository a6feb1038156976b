"""Study trials for the studies browser, without Textual: filter, sort, page, and the
data behind its plots (optimisation history, slices, intermediate values, importances).

Filter syntax (`/` on the studies view), terms separated by spaces, all must hold:

    complete pruned          trials in any of these states
    state=complete,fail      the same, spelled out
    lr<0.01  units>=128      a parameter compared with a number (a unique suffix
                             of the dotted name is enough: lr for optimizer.lr)
    lr=1e-4..1e-2            a closed range
    optimizer.name=adam      equality, for any parameter
    value<0.3                the trial's objective value
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trialdeck.engine.errors import BadInput

STATES = ("complete", "pruned", "fail", "running", "waiting")
PAGE = 200
_TERM = re.compile(r"^(?P<key>[A-Za-z_][\w.]*)\s*(?P<op><=|>=|!=|=|<|>)\s*(?P<value>.+)$")

Trial = dict[str, Any]
Predicate = Callable[[Trial], bool]


def param_names(trials: Sequence[Trial]) -> list[str]:
    names: dict[str, None] = {}
    for t in trials:
        for k in t.get("params") or {}:
            names.setdefault(k, None)
    return list(names)


def _resolve_key(key: str, params: Sequence[str]) -> str:
    if key in ("value", "number", "duration", "state") or key in params:
        return key
    hits = [p for p in params if p.endswith("." + key) or p.rsplit(".", 1)[-1] == key]
    if len(hits) == 1:
        return hits[0]
    allowed = ", ".join(["state", "value", "number", "duration", *params])
    if hits:
        raise BadInput(f"{key!r} is ambiguous: {', '.join(hits)}")
    raise BadInput(f"unknown field {key!r}; allowed: {allowed}")


def _get(trial: Trial, key: str) -> Any:
    if key in ("value", "number", "duration", "state"):
        return trial.get(key)
    return (trial.get("params") or {}).get(key)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_filter(text: str, params: Sequence[str]) -> Predicate:
    """A predicate over trials for `text`; BadInput with one line saying what is allowed."""
    checks: list[Predicate] = []
    states: set[str] = set()
    for term in text.split():
        low = term.lower()
        if low in STATES:
            states.add(low)
            continue
        m = _TERM.match(term)
        if not m:
            raise BadInput(f"{term!r}: write a state ({', '.join(STATES)}) or field<op>value, e.g. lr<0.01 or lr=1e-4..1e-2")
        key, op, raw = m["key"], m["op"], m["value"]
        field = _resolve_key(key, params)
        if field == "state":
            wanted = {s.strip().lower() for s in raw.split(",") if s.strip()}
            bad = wanted - set(STATES)
            if op != "=" or bad:
                raise BadInput(f"state{op}{raw}: allowed: state=" + ",".join(STATES))
            states |= wanted
            continue
        checks.append(_predicate(field, op, raw))
    if states:
        wanted_states = frozenset(states)
        checks.append(lambda t: str(t.get("state", "")).lower() in wanted_states)
    return lambda t: all(c(t) for c in checks)


def _predicate(field: str, op: str, raw: str) -> Predicate:
    if op == "=" and ".." in raw:
        lo_text, _, hi_text = raw.partition("..")
        lo, hi = _number(lo_text), _number(hi_text)
        if lo is None or hi is None:
            raise BadInput(f"{field}={raw}: a range needs two numbers, e.g. {field}=0.001..0.1")
        if lo > hi:
            raise BadInput(f"{field}={raw}: the low end {lo:g} is above the high end {hi:g}")
        return lambda t: isinstance(v := _get(t, field), (int, float)) and not isinstance(v, bool) and lo <= v <= hi
    number = _number(raw)
    if op in ("<", "<=", ">", ">="):
        if number is None:
            raise BadInput(f"{field}{op}{raw}: {op} needs a number")
        cmp = {"<": lambda v: v < number, "<=": lambda v: v <= number,
               ">": lambda v: v > number, ">=": lambda v: v >= number}[op]
        return lambda t: isinstance(v := _get(t, field), (int, float)) and not isinstance(v, bool) and cmp(v)

    def equal(t: Trial) -> bool:
        v = _get(t, field)
        if number is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
            return math.isclose(v, number, rel_tol=1e-9, abs_tol=1e-12)
        return str(v).lower() == raw.lower()

    return equal if op == "=" else (lambda t: not equal(t))


def short_names(params: Sequence[str]) -> dict[str, str]:
    """A column header per parameter: the shortest dotted suffix that names it alone.

    `optimizer.lr` -> `lr`; `model.hidden.0` -> `hidden.0` (a bare index says nothing, and
    `model.dropout.0` would read the same). Each is a key the filter accepts (`hidden.0>256`).
    """
    out = {}
    for p in params:
        parts = p.split(".")
        name = p
        for n in range(1, len(parts) + 1):
            if parts[-n].isdigit():
                continue
            suffix = ".".join(parts[-n:])
            if sum(1 for q in params if q == suffix or q.endswith("." + suffix)) == 1:
                name = suffix
                break
        out[p] = name
    return out


def columns_for(params: Sequence[str]) -> list[str]:
    return ["number", "state", "value", "duration", *params]


def sort_trials(trials: Sequence[Trial], column: str, reverse: bool = False) -> list[Trial]:
    """By `column`; trials without a value for it come last either way."""
    def key(t: Trial) -> tuple:
        v = _get(t, column)
        if v is None:
            return (1, 0, "")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (0, 0, float(v))
        return (0, 1, str(v))

    present = [t for t in trials if _get(t, column) is not None]
    missing = [t for t in trials if _get(t, column) is None]
    return sorted(present, key=key, reverse=reverse) + missing


def page_of(items: Sequence[Trial], page: int, size: int = PAGE) -> tuple[list[Trial], int, int]:
    """(the page's items, the page actually shown, the number of pages)."""
    pages = max(1, math.ceil(len(items) / size))
    page = min(max(0, page), pages - 1)
    return list(items[page * size:(page + 1) * size]), page, pages


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ",".join(fmt(x) for x in v) + "]"
    return str(v)


def trial_cells(t: Trial, params: Sequence[str]) -> tuple[str, ...]:
    dur = t.get("duration")
    return (str(t.get("number", "")), str(t.get("state", "")), fmt(t.get("value")),
            f"{dur:.1f}s" if isinstance(dur, (int, float)) else "", *(fmt((t.get("params") or {}).get(p)) for p in params))


# ----------------------------------------------------------------------------- plot data


@dataclass(frozen=True)
class History:
    xs: tuple[float, ...]
    values: tuple[float, ...]
    best: tuple[float, ...]


def history(trials: Sequence[Trial], direction: str) -> History:
    done = sorted((t for t in trials if t.get("state") == "complete" and isinstance(t.get("value"), (int, float))),
                  key=lambda t: t["number"])
    xs: list[float] = []
    values: list[float] = []
    best: list[float] = []
    pick = min if direction == "minimize" else max
    for t in done:
        xs.append(float(t["number"]))
        values.append(float(t["value"]))
        best.append(pick(best[-1], values[-1]) if best else values[-1])
    return History(tuple(xs), tuple(values), tuple(best))


@dataclass(frozen=True)
class Slice:
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    ticks: tuple[tuple[float, ...], tuple[str, ...]] | None
    """Categorical parameters: positions and labels."""


def slice_of(trials: Sequence[Trial], param: str) -> Slice:
    pts: list[tuple[Any, float]] = [((t.get("params") or {}).get(param), float(t["value"])) for t in trials
                                    if t.get("state") == "complete" and isinstance(t.get("value"), (int, float))
                                    and (t.get("params") or {}).get(param) is not None]
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pts):
        return Slice(tuple(float(x) for x, _ in pts), tuple(float(y) for _, y in pts), None)
    labels = sorted({fmt(x) for x, _ in pts})
    pos = {label: float(i) for i, label in enumerate(labels)}
    return Slice(tuple(pos[fmt(x)] for x, _ in pts), tuple(float(y) for _, y in pts),
                 (tuple(pos.values()), tuple(labels)))


def intermediate_curves(trials: Sequence[Trial], limit: int = 8) -> tuple[list[tuple[str, list[float], list[float]]], bool]:
    """(label, steps, values) for running trials; when none runs, the last `limit` with values.
    The flag says whether these are running trials."""
    def curve(t: Trial) -> tuple[str, list[float], list[float]]:
        inter = t.get("intermediate") or {}
        steps = sorted(inter, key=lambda k: float(k))
        return (f"#{t['number']}", [float(s) for s in steps], [inter[s] for s in steps])

    running = [t for t in trials if t.get("state") == "running" and t.get("intermediate")]
    if running:
        return [curve(t) for t in running[-limit:]], True
    ended = [t for t in trials if t.get("intermediate")]
    return [curve(t) for t in ended[-limit:]], False


def best_text(study: dict[str, Any]) -> str:
    best = study.get("best")
    head = f"{study['name']}: {study.get('metric', '?')} ({study.get('direction', '?')}), " \
           f"{study.get('sampler', '?')} sampler, {study.get('pruner', '?')} pruner"
    counts = study.get("counts") or {}
    tally = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials yet"
    if not best:
        return f"{head}\n{tally}\nno complete trial yet"
    params = "  ".join(f"{k}={fmt(v)}" for k, v in (best.get("params") or {}).items())
    run = f" (run {best['run_id']})" if best.get("run_id") else ""
    return f"{head}\n{tally}\nbest: trial #{best['number']} value {fmt(best.get('value'))}{run}\n{params}"
