"""Study trials for the studies browser, without Textual: filter, sort, page, and the
data behind its plots (optimisation history, slices, intermediate values, importances,
and for several objectives the Pareto front, hypervolume, parallel coordinates, EDF).

Filter syntax (`/` on the studies view), terms separated by spaces, all must hold:

    complete pruned          trials in any of these states
    state=complete,fail      the same, spelled out
    lr<0.01  units>=128      a parameter compared with a number (a unique suffix
                             of the dotted name is enough: lr for optimizer.lr)
    lr=1e-4..1e-2            a closed range
    optimizer.name=adam      equality, for any parameter
    value<0.3                the trial's objective value (several objectives: by
                             name, val_acc>0.9 parameters<5000)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
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


OBJ = "obj:"
"""Column and filter field of one objective of several: "obj:0", "obj:1", ..."""


def _resolve_key(key: str, params: Sequence[str], objectives: Sequence[str] = ()) -> str:
    if len(objectives) > 1 and key in objectives:
        return f"{OBJ}{list(objectives).index(key)}"
    if key in ("value", "number", "duration", "state") or key in params:
        return key
    hits = [p for p in params if p.endswith("." + key) or p.rsplit(".", 1)[-1] == key]
    if len(hits) == 1:
        return hits[0]
    names = list(objectives) if len(objectives) > 1 else ["value"]
    allowed = ", ".join(["state", *names, "number", "duration", *params])
    if hits:
        raise BadInput(f"{key!r} is ambiguous: {', '.join(hits)}")
    raise BadInput(f"unknown field {key!r}; allowed: {allowed}")


def _get(trial: Trial, key: str) -> Any:
    if key.startswith(OBJ):
        return objective_value(trial, int(key[len(OBJ):]))
    if key in ("value", "number", "duration", "state"):
        return trial.get(key)
    return (trial.get("params") or {}).get(key)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_filter(text: str, params: Sequence[str], objectives: Sequence[str] = ()) -> Predicate:
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
        field = _resolve_key(key, params, objectives)
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


def columns_for(params: Sequence[str], objectives: Sequence[str] = ()) -> list[str]:
    values = [f"{OBJ}{i}" for i in range(len(objectives))] if len(objectives) > 1 else ["value"]
    return ["number", "state", *values, "duration", *params]


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


def trial_cells(t: Trial, params: Sequence[str], objectives: Sequence[str] = ()) -> tuple[str, ...]:
    dur = t.get("duration")
    values = [fmt(objective_value(t, i)) for i in range(len(objectives))] if len(objectives) > 1 else \
        [fmt(t.get("value"))]
    return (str(t.get("number", "")), str(t.get("state", "")), *values,
            f"{dur:.1f}s" if isinstance(dur, (int, float)) else "", *(fmt((t.get("params") or {}).get(p)) for p in params))


# ----------------------------------------------------------------------------- plot data


@dataclass(frozen=True)
class History:
    xs: tuple[float, ...]
    values: tuple[float, ...]
    best: tuple[float, ...]


def history(trials: Sequence[Trial], direction: str, index: int = 0) -> History:
    done = sorted(_complete(trials, (index,)), key=lambda t: t["number"])
    xs: list[float] = []
    values: list[float] = []
    best: list[float] = []
    pick = min if direction == "minimize" else max
    for t in done:
        xs.append(float(t["number"]))
        values.append(_known(t, index))
        best.append(pick(best[-1], values[-1]) if best else values[-1])
    return History(tuple(xs), tuple(values), tuple(best))


@dataclass(frozen=True)
class Slice:
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    ticks: tuple[tuple[float, ...], tuple[str, ...]] | None
    """Categorical parameters: positions and labels."""


def slice_of(trials: Sequence[Trial], param: str, index: int = 0) -> Slice:
    pts: list[tuple[Any, float]] = [((t.get("params") or {}).get(param), _known(t, index))
                                    for t in _complete(trials, (index,)) if (t.get("params") or {}).get(param) is not None]
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pts):
        return Slice(tuple(float(x) for x, _ in pts), tuple(float(y) for _, y in pts), None)
    labels = sorted({fmt(x) for x, _ in pts})
    pos = {label: float(i) for i, label in enumerate(labels)}
    return Slice(tuple(pos[fmt(x)] for x, _ in pts), tuple(float(y) for _, y in pts),
                 (tuple(pos.values()), tuple(labels)))


def intermediate_curves(trials: Sequence[Trial], limit: int = 8,
                        index: int = 0) -> tuple[list[tuple[str, list[float], list[float]]], bool]:
    """(label, steps, values) for running trials; when none runs, the last `limit` with values.
    The flag says whether these are running trials. Several objectives: their per-epoch values
    are lists; `index` picks one."""
    def curve(t: Trial) -> tuple[str, list[float], list[float]]:
        inter = t.get("intermediate") or {}
        steps = sorted(inter, key=lambda k: float(k))
        ys = [v[index] if isinstance(v, list) and index < len(v) else v for v in (inter[s] for s in steps)]
        return (f"#{t['number']}", [float(s) for s in steps], ys)

    running = [t for t in trials if t.get("state") == "running" and t.get("intermediate")]
    if running:
        return [curve(t) for t in running[-limit:]], True
    ended = [t for t in trials if t.get("intermediate")]
    return [curve(t) for t in ended[-limit:]], False


def best_text(study: Mapping[str, Any]) -> str:
    best = study.get("best")
    names, directions = objective_names(study), directions_of(study)
    wanted = ", ".join(f"{m} ({d})" for m, d in zip(names, directions, strict=False))
    made = f"{study.get('sampler', '?')} sampler, {study.get('pruner', '?')} pruner" if study.get("preset") or \
        not study.get("foreign") else f"not made by trialdeck ({study.get('source') or study.get('storage', '')})"
    head = f"{study['name']}: {wanted}, {made}"
    counts = study.get("counts") or {}
    tally = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials yet"
    if study.get("pareto") is not None:
        front = study["pareto"]
        shown = ", ".join(f"#{n}" for n in front[:12]) + (" ..." if len(front) > 12 else "")
        return f"{head}\n{tally}\npareto front: {len(front)} trials {shown}".rstrip()
    if not best:
        return f"{head}\n{tally}\nno complete trial yet"
    params = "  ".join(f"{k}={fmt(v)}" for k, v in (best.get("params") or {}).items())
    run = f" (run {best['run_id']})" if best.get("run_id") else ""
    return f"{head}\n{tally}\nbest: trial #{best['number']} value {fmt(best.get('value'))}{run}\n{params}"


# ----------------------------------------------------------------------------- several objectives


def objective_names(study: Mapping[str, Any]) -> list[str]:
    """The study's objectives' names, in order (one: its metric, or "value")."""
    objectives = study.get("objectives") or [{"metric": study.get("metric") or "value"}]
    return [str(o.get("metric")) for o in objectives]


def directions_of(study: Mapping[str, Any]) -> list[str]:
    return list(study.get("directions") or [study.get("direction") or "minimize"])


def objective_value(t: Trial, index: int) -> float | None:
    """A trial's value of objective `index`: `values[index]`, or `value` for a one-objective trial."""
    values = t.get("values")
    v = values[index] if isinstance(values, list) and index < len(values) else (t.get("value") if index == 0 else None)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _complete(trials: Sequence[Trial], indices: Sequence[int]) -> list[Trial]:
    return [t for t in trials if t.get("state") == "complete" and all(objective_value(t, i) is not None for i in indices)]


def _known(t: Trial, index: int) -> float:
    """Objective `index` of a trial `_complete` kept for it (a number there, never None)."""
    value = objective_value(t, index)
    assert value is not None
    return value


@dataclass(frozen=True)
class ParetoData:
    """Every complete trial as a point of two objectives, the study's front marked."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]
    numbers: tuple[int, ...]
    on_front: tuple[bool, ...]
    """On the front of all the study's objectives (optuna's best_trials), not only these two."""


def pareto_data(trials: Sequence[Trial], directions: Sequence[str], xi: int, yi: int) -> ParetoData:
    from trialdeck.engine.tuning.pareto import front_mask, losses

    done = _complete(trials, range(len(directions)))
    if not done:
        return ParetoData((), (), (), ())
    values = [[_known(t, i) for i in range(len(directions))] for t in done]
    mask = front_mask(losses(values, directions))
    return ParetoData(tuple(v[xi] for v in values), tuple(v[yi] for v in values),
                      tuple(int(t["number"]) for t in done), tuple(bool(m) for m in mask))


def front_trials(trials: Sequence[Trial], data: ParetoData, by: int = 0) -> list[Trial]:
    """The front's trials, ordered by objective `by` (the Pareto view's list)."""
    on = {n for n, f in zip(data.numbers, data.on_front, strict=True) if f}
    return sorted((t for t in trials if t.get("number") in on), key=lambda t: objective_value(t, by) or 0.0)


@dataclass(frozen=True)
class HypervolumeData:
    xs: tuple[float, ...]
    hv: tuple[float, ...]
    reference: tuple[float, ...]
    """The reference point, in the objectives' own values."""


def hypervolume_data(trials: Sequence[Trial], directions: Sequence[str]) -> HypervolumeData:
    """The hypervolume of the complete trials up to each one (in number order), against a
    reference point a tenth of their range beyond the worst value of each objective."""
    import numpy as np

    from trialdeck.engine.tuning.pareto import hypervolume_history, losses, reference_point

    done = sorted(_complete(trials, range(len(directions))), key=lambda t: t["number"])
    if len(directions) < 2 or not done:
        return HypervolumeData((), (), ())
    loss = losses([[_known(t, i) for i in range(len(directions))] for t in done], directions)
    ref = reference_point(loss)
    hv = hypervolume_history(loss, ref)
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return HypervolumeData(tuple(float(t["number"]) for t in done), tuple(float(v) for v in hv),
                           tuple(float(v) for v in ref * sign))


@dataclass(frozen=True)
class ParallelData:
    """Polylines over one axis per parameter and a last one for the objective, each axis
    scaled to 0..1; `groups` splits them into bands of the objective, worst first."""

    axes: tuple[str, ...]
    ranges: tuple[str, ...]
    """Each axis's low..high (or its categories), as the caption says them."""
    groups: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]
    """Per band: (xs, ys) of its polylines, NaN between two trials."""


BANDS = 5


def parallel_data(trials: Sequence[Trial], params: Sequence[str], index: int, direction: str,
                  objective: str) -> ParallelData:
    done = _complete(trials, (index,))
    if not done or not params:
        return ParallelData((), (), ())
    columns: list[list[float]] = []
    ranges: list[str] = []
    for p in params:
        scaled, text = _axis([(t.get("params") or {}).get(p) for t in done])
        columns.append(scaled)
        ranges.append(f"{short_names(params)[p]} {text}")
    scores = [objective_value(t, index) or 0.0 for t in done]
    obj_scaled, text = _axis(scores)
    columns.append(obj_scaled)
    ranges.append(f"{objective} {text}")
    # Bands by rank: the best fifth drawn last, on top.
    order = sorted(range(len(done)), key=lambda i: scores[i], reverse=direction == "minimize")
    groups = []
    for band in range(BANDS):
        members = order[band * len(order) // BANDS:(band + 1) * len(order) // BANDS]
        xs: list[float] = []
        ys: list[float] = []
        for i in members:
            xs += [float(a) for a in range(len(columns))] + [math.nan]
            ys += [col[i] for col in columns] + [math.nan]
        groups.append((tuple(xs), tuple(ys)))
    return ParallelData((*(short_names(params)[p] for p in params), objective), tuple(ranges), tuple(groups))


def _axis(raw: Sequence[Any]) -> tuple[list[float], str]:
    """Values scaled to 0..1 (NaN where missing: a conditional parameter), and the axis's range
    in words. Numbers spanning more than two decades on a log scale; others as categories."""
    numbers = [v for v in raw if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and len(numbers) == len([v for v in raw if v is not None]):
        lo, hi = min(numbers), max(numbers)
        log = lo > 0 and hi / lo > 100
        f = (lambda v: math.log10(v)) if log else (lambda v: float(v))
        a, b = f(lo), f(hi)
        span = (b - a) or 1.0
        scaled = [(f(v) - a) / span if isinstance(v, (int, float)) else math.nan for v in raw]
        return scaled, f"{fmt(lo)}..{fmt(hi)}" + (" (log)" if log else "")
    labels = sorted({fmt(v) for v in raw if v is not None})
    pos = {label: (i / (len(labels) - 1) if len(labels) > 1 else 0.5) for i, label in enumerate(labels)}
    return [pos[fmt(v)] if v is not None else math.nan for v in raw], "|".join(labels)


def edf_data(trials: Sequence[Trial], index: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The empirical distribution of objective `index` over the complete trials, as a step line:
    the fraction of trials with a value at most x."""
    values = sorted(v for t in trials if t.get("state") == "complete" and (v := objective_value(t, index)) is not None)
    n = len(values)
    xs: list[float] = []
    ys: list[float] = []
    for k, v in enumerate(values):
        xs += [v, v]
        ys += [k / n, (k + 1) / n]
    return tuple(xs), tuple(ys)
