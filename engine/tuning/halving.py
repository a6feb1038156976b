"""The pareto_halving pruner: successive halving by dominance, for one objective or several.

Optuna prunes single-objective studies only (`Trial.report` refuses a
multi-objective study), so this pruner reads every trial's per-epoch values
itself. It follows MO-ASHA (Schmucker et al., 2021) the way Optuna's
SuccessiveHalvingPruner follows ASHA: rungs sit at `min_resource *
reduction_factor ** k` epochs; when a trial reaches a rung, its values there
are ranked with those of every other trial that reached the same rung
(non-dominated sorting). It stops when its rank is outside the top
1/`reduction_factor` of them (at least one place; ties with the last place
kept go on too, so a trial on the rung's front is never pruned) and more than
`reduction_factor` trials dominate it there: one that only a few trials beat
at a rung is close to its front, and late bloomers of the same size often
overtake them (in tests/fixtures/mo_curves.json, two trials that end on the
front were stopped without this guard). The reason names the trials that
dominate it at that rung.

A trial's values at a rung are those of its first recorded epoch at or after
the rung's epoch (a script may skip an epoch's metric), before the next rung.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trialdeck.engine.tuning import pareto

DEFAULT_MIN_RESOURCE = 1
DEFAULT_REDUCTION_FACTOR = 3
DEFAULT_STARTUP_TRIALS = 2
"""Other trials that must have reached a rung before a trial is compared there: against one
other trial alone, half the trials would be pruned by chance."""
VALUES_ATTR = "intermediate_values"
"""The trial user attr holding a multi-objective trial's per-epoch values ({"epoch": [values]})."""


@dataclass(frozen=True)
class Verdict:
    """The pruner's decision at one rung, with the numbers it compared."""

    prune: bool
    step: int
    rung: int
    values: tuple[float, ...]
    rank: int
    """0: on the rung's front."""
    n_trials: int
    """Trials compared at this rung, this one included."""
    kept: int
    """How many of them go on (ties at the last place kept go on too)."""
    dominated_by: tuple[int, ...] = field(default=())
    """Numbers of the trials that dominate this one at this rung."""


@dataclass(frozen=True)
class ParetoHalving:
    directions: tuple[str, ...]
    min_resource: int = DEFAULT_MIN_RESOURCE
    reduction_factor: int = DEFAULT_REDUCTION_FACTOR
    n_startup_trials: int = DEFAULT_STARTUP_TRIALS

    def rung_of(self, step: int) -> int | None:
        """The rung whose range [its epoch, the next rung's epoch) holds `step`; None before the first."""
        if step < self.min_resource:
            return None
        rung, at = 0, self.min_resource
        while at * self.reduction_factor <= step:
            at *= self.reduction_factor
            rung += 1
        return rung

    def rung_step(self, rung: int) -> int:
        return self.min_resource * self.reduction_factor ** rung

    def value_at(self, steps: Mapping[int, Sequence[float]], rung: int) -> Sequence[float] | None:
        """A trial's values at `rung`: at its first recorded step in the rung's range."""
        low, high = self.rung_step(rung), self.rung_step(rung + 1)
        inside = [s for s in steps if low <= s < high]
        return steps[min(inside)] if inside else None

    def decide(self, number: int, step: int, steps: Mapping[int, Sequence[float]],
               others: Mapping[int, Mapping[int, Sequence[float]]]) -> Verdict | None:
        """Whether trial `number`, whose recorded values by step are `steps` (this step's
        included), stops at `step`; None when `step` is not where it reaches a rung or too few
        other trials reached the rung. `others`: every other trial's values by step."""
        rung = self.rung_of(step)
        if rung is None or step not in steps:
            return None
        if min(s for s in steps if s >= self.rung_step(rung)) != step:
            return None  # compared at this rung already
        mine = list(steps[step])
        rivals: list[tuple[int, Sequence[float]]] = []
        for n, their in others.items():
            at = self.value_at(their, rung) if n != number else None
            if at is not None:
                rivals.append((n, at))
        if len(rivals) < max(1, self.n_startup_trials):
            return None
        loss = pareto.losses([mine, *(list(v) for _, v in rivals)], self.directions)
        ranks = pareto.ranks(loss)
        n = len(loss)
        kept = max(1, n // self.reduction_factor)
        threshold = sorted(ranks)[kept - 1]
        beaten_by = tuple(rivals[i - 1][0] for i in pareto.dominators(loss, 0))
        # Outside the top 1/reduction_factor, and dominated by more than reduction_factor trials: a
        # trial only a few others beat at a rung is near its front and often overtakes them later.
        prune = bool(ranks[0] > threshold) and len(beaten_by) > self.reduction_factor
        return Verdict(prune=prune, step=step, rung=rung, values=tuple(mine),
                       rank=int(ranks[0]), n_trials=n, kept=int(sum(1 for r in ranks if r <= threshold)),
                       dominated_by=tuple(sorted(beaten_by)))


def explain(verdict: Verdict, metrics: Sequence[str]) -> tuple[str, dict]:
    """The prune reason in words, naming the trials that dominate this one, and its numbers."""
    shown = ", ".join(f"{m} {v:.4g}" for m, v in zip(metrics, verdict.values, strict=True))
    names = ", ".join(f"#{n}" for n in verdict.dominated_by[:6])
    more = f" and {len(verdict.dominated_by) - 6} more" if len(verdict.dominated_by) > 6 else ""
    message = (f"pareto halving at epoch {verdict.step}: {shown} is dominated by trials {names}{more} "
               f"(rank {verdict.rank + 1} of {verdict.n_trials} trials at this rung; {verdict.kept} go on)")
    data = {"rule": "pareto_halving", "step": verdict.step, "rung": verdict.rung, "values": list(verdict.values),
            "rank": verdict.rank, "n_trials": verdict.n_trials, "kept": verdict.kept,
            "dominated_by": list(verdict.dominated_by)}
    return message, data
