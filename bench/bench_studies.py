"""Any Optuna study at scale, and pruning by dominance.

Scale: a two-objective study of N trials x 8 parameters (10,000; --quick 1,000) written
by plain Optuna into an SQLite file, then

- storage read: `storages.read_study` (the CLI's and the TUI's read: trials as
  documents, counts, Optuna's front) next to `optuna.load_study(...).get_trials(deepcopy=False)`
  on the same file, both cold (a new storage object each); ratio <= 1.5;
- the Studies view opening it: from its trials arriving on the screen to the trial table
  drawn (filter, sort, the first page, history, slice and intermediate plots), in a
  Pilot app at 120x40; <= 1 s;
- importances with PED-ANOVA, of one objective and for reaching the front; <= 1 s each;
- the Pareto scatter of 5,000 of its trials: the view's data (front, table) and the plot's
  raster at 120x40; <= 100 ms.

Pruning: the pareto_halving pruner replayed on recorded two-objective studies of 40
trials x 9 epochs each (tests/fixtures/mo_curves*.json, real digits trainings recorded by
bench/scripts/record_mo_curves.py): the final front's hypervolume against the same
studies without pruning (>= 95%), and the epochs trained (<= 60%).

Usage: python bench/bench_studies.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = sorted((ROOT / "tests" / "fixtures").glob("mo_curves*.json"))
NAME = "scale"


def build(path: Path, n: int) -> str:
    """A two-objective study of n trials x 8 parameters, written by plain Optuna."""
    import optuna
    from sqlalchemy import event

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{path}"
    storage = optuna.storages.RDBStorage(url)

    @event.listens_for(storage.engine, "connect")
    def _fast(dbapi, _record) -> None:  # building only: the reads below open the file afresh
        cursor = dbapi.cursor()
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.close()

    storage.engine.dispose()
    study = optuna.create_study(study_name=NAME, storage=storage, directions=["maximize", "minimize"])
    dists = {f"p{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(6)}
    dists["width"] = optuna.distributions.IntDistribution(8, 1024, log=True)
    dists["act"] = optuna.distributions.CategoricalDistribution(["relu", "gelu", "tanh"])
    rng = random.Random(0)
    trials = []
    for _ in range(n):
        params = {k: rng.random() for k in dists if k.startswith("p")}
        params["width"], params["act"] = int(8 * 2 ** (rng.random() * 7)), rng.choice(["relu", "gelu", "tanh"])
        accuracy = 1.0 - 4.0 / params["width"] - 0.1 * params["p0"] - 0.05 * params["p1"] ** 2 + rng.random() / 50
        trials.append(optuna.trial.create_trial(params=params, distributions=dists,
                                                values=[accuracy, float(params["width"] * 100)]))
    study.add_trials(trials)
    return url


def storage_read(url: str, reps: int) -> tuple[float, float]:
    import optuna

    from trialdeck.engine.tuning import storages

    ours, plain = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        optuna.load_study(study_name=NAME, storage=url).get_trials(deepcopy=False)
        plain.append(time.perf_counter() - t0)
        storages._READERS.clear()  # cold, like the plain side
        t0 = time.perf_counter()
        storages.read_study(storages.parse(url), NAME)
        ours.append(time.perf_counter() - t0)
    return statistics.median(ours), statistics.median(plain)


def importances(url: str) -> tuple[float, float]:
    from trialdeck.engine.tuning import insight, storages

    study = storages.load_study(storages.parse(url), NAME)
    study.get_trials(deepcopy=False)  # read once: the figure is the evaluator's
    insight.importances(study, objective=0, evaluator="ped_anova")  # and imported once (scipy)
    t0 = time.perf_counter()
    one = insight.importances(study, objective=0)
    t1 = time.perf_counter()
    front = insight.importances(study, objective=None)
    t2 = time.perf_counter()
    assert one.values and front.values, (one.note, front.note)
    return t1 - t0, t2 - t1


def view(url: str, n: int, reps: int) -> tuple[float, float]:
    """(the Studies view drawing the study once its trials arrived, the Pareto redraw of 5,000)."""
    from trialdeck.engine.tuning import storages
    from trialdeck.engine.workspace import Workspace
    from trialdeck.tui.app import make_app
    from trialdeck.tui.probes import FixedProbe
    from trialdeck.tui.testing import fixed_clock, wait_for
    from trialdeck.tui.widgets.study_plots import ParetoPane, StudyView

    async def go(home: Path) -> tuple[float, float]:
        parsed = storages.parse(url)
        app = make_app(Workspace(home).ensure(), start_engine=False, clock=fixed_clock, probe=FixedProbe(),
                       interval=0.5, cursor_blink=False, storages=[parsed])
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("4")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "StudiesScreen", what="studies")
            screen = app.screen
            screen.study = f"{NAME}\x1f{parsed}"
            await wait_for(pilot, lambda: len(screen.trials) == n, what="trials", timeout=120)
            trials = screen.trials
            table = screen.query_one("#trial-table")
            opened = []
            for _ in range(reps):
                screen.trials = ()
                await wait_for(pilot, lambda: table.row_count == 0, what="empty")
                t0 = time.perf_counter()
                screen.trials = trials
                await wait_for(pilot, lambda: table.row_count == min(200, n), what="the table", timeout=60)
                opened.append(time.perf_counter() - t0)
            screen.query_one("#study-tabs").active = "tab-pareto"
            await pilot.pause()
            pane = screen.query_one(ParetoPane)
            plot = pane.query_one("#pareto-plot")
            subset = StudyView("subset", screen._doc(screen.study), trials[:5000], 0, 10**6)
            redraws = []
            for _ in range(reps):
                t0 = time.perf_counter()
                pane._plot(subset)
                plot._draw(plot.size.width, plot.size.height)
                redraws.append(time.perf_counter() - t0)
            return statistics.median(opened), statistics.median(redraws)

    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(go(Path(tmp) / "home"))


SETTINGS = ({}, {"reduction_factor": 2})
"""The pruner as a preset gets it by default (reduction_factor 3, min_resource 1), and halving harder."""


def pruning() -> list[dict]:
    from tests.test_pareto_pruning import replay
    from trialdeck.engine.tuning import pareto
    from trialdeck.engine.tuning.halving import ParetoHalving

    out = []
    for path, settings in ((p, s) for s in SETTINGS for p in FIXTURES):
        curves = json.loads(path.read_text())
        ended = replay(curves, ParetoHalving(tuple(curves["directions"]), **settings))
        everything = pareto.losses([t["values"] for t in curves["trials"]], curves["directions"])
        kept = pareto.losses([t["values"] for t in curves["trials"] if ended[t["number"]][0] == "complete"],
                             curves["directions"])
        ref = pareto.reference_point(everything)
        out.append({"fixture": path.name, "trials": len(curves["trials"]), "epochs": curves["epochs"],
                    "settings": ", ".join(f"{k} {v}" for k, v in settings.items()) or "defaults",
                    "hv_ratio": pareto.hypervolume(kept, ref) / pareto.hypervolume(everything, ref),
                    "epochs_ratio": sum(e for _, e in ended.values()) / (len(ended) * curves["epochs"]),
                    "pruned": sum(1 for s, _ in ended.values() if s == "pruned"),
                    "front_kept": all(ended[n][0] == "complete" for n in curves["pareto"])})
    return out


def run(quick: bool = False) -> dict:
    n = 1_000 if quick else 10_000
    reps = 2 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        url = build(Path(tmp) / "scale.sqlite3", n)
        built = time.perf_counter() - t0
        ours, plain = storage_read(url, reps)
        one, front = importances(url)
        opened, redraw = view(url, n, reps)
    return {"n": n, "built": built, "read": ours, "read_plain": plain, "importance_one": one,
            "importance_front": front, "opened": opened, "redraw": redraw, "pruning": pruning()}


def report(r: dict) -> list[tuple[str, str, str, str]]:
    n = f"{r['n']:,}"
    rows = [
        (f"storage read, {n} trials x 8 params, 2 objectives, SQLite (cold)", f"{r['read']:.2f} s",
         f"{r['read_plain']:.2f} s optuna.load_study(...).get_trials()",
         f"ratio {r['read'] / r['read_plain']:.2f} (<= 1.5)"),
        (f"Studies view drawn once the {n} trials arrived (120x40)", f"{r['opened'] * 1000:.0f} ms", "-",
         "<= 1 s"),
        (f"importances, PED-ANOVA, one objective, {n} trials", f"{r['importance_one'] * 1000:.0f} ms", "-", "<= 1 s"),
        (f"importances, PED-ANOVA, reaching the front, {n} trials", f"{r['importance_front'] * 1000:.0f} ms", "-",
         "<= 1 s"),
        ("Pareto scatter of 5,000 trials: front, list and raster (120x40)", f"{r['redraw'] * 1000:.0f} ms", "-",
         "<= 100 ms"),
    ]
    for p in r["pruning"]:
        what = (f"pareto_halving ({p['settings']}) on {p['fixture']} ({p['trials']} trials x {p['epochs']} epochs, "
                f"{p['pruned']} pruned)")
        rows.append((f"{what}: final hypervolume", f"{p['hv_ratio']:.2%}", "100% without pruning", ">= 95%"))
        rows.append((f"{what}: epochs trained, front kept: {'yes' if p['front_kept'] else 'NO'}",
                     f"{p['epochs_ratio']:.0%}", "100% without pruning", "<= 60%"))
    return rows


def main() -> None:
    result = run(quick="--quick" in sys.argv)
    print(f"(built the study in {result['built']:.0f} s)")
    for row in report(result):
        print(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]} |")


if __name__ == "__main__":
    main()
