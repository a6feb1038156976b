"""A workspace of studies for bench_scale.py: 50 ended studies of 1,000 trials, and the figures that read them.

Building (about a minute at full size): every study's trials are runs of 20 epochs, sealed into
segments through the catalogue's own write path (as `runs import` commits its batches, but as trials
of their study: `study`, `trial`, `trial_id`, `params`), and each study is mirrored by the same
`studies.sync` the engine calls when a study ends. The first study, `sweep-00`, is real: its Optuna
journal in the workspace holds its 1,000 trials (made with plain Optuna through trialdeck's
`create_or_load`, the way `trialdeck tune` leaves a finished study), so `studies show` reconciles
with it as it would on a user's box; the other 49 are its mirror under other names and run ids
(their journals are never read: nothing opens an ended study's storage but `studies show`). The
reference workspace, `one`, holds `sweep-00` alone, built the same way. `build_in_child` builds in
a child process (`python bench/scale_studies.py ROOT NAME STUDIES TRIALS`): a process's peak memory
carries over into the processes it starts, so the bench's own must stay small.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EPOCHS = 20
REAL = "sweep-00"


def _history(k: float) -> list[dict[str, Any]]:
    return [{"epoch": e, "train_loss": round(2.3 * 2.718 ** (-k * e) + 0.05, 5),
             "val_loss": round(2.3 * 2.718 ** (-k * e) + 0.1, 5), "val_acc": round(1 - 0.9 * 2.718 ** (-k * e), 5),
             "lr": 0.1 * 0.5 ** ((e + 1) // 10), "seconds": 1.2} for e in range(1, EPOCHS + 1)]


def _add_runs(store, count: int, make: Callable[[int, int, float], dict[str, Any]]) -> None:
    """`count` finished runs sealed straight into their segments, a segment's worth per commit
    (`trialdeck.engine.catalogue.records._commit_batch`'s way): `make(number, seq, now)` gives each document."""
    from trialdeck.engine.catalogue import sealing
    from trialdeck.engine.catalogue.segments import SEGMENT_RUNS, segment_of

    left = count
    while left:
        with store._write() as db:
            first = store._allocate(db, 0)[0]
            batch = min(left, SEGMENT_RUNS - first % SEGMENT_RUNS)
            number, seq = store._allocate(db, batch)
            now = time.time()
            docs = {str(number + i): make(number + i, seq + i, now) for i in range(batch)}
            k = segment_of(number)
            old = sealing.registry(db).get(k)
            sealing.write_segment(store, db, k, {**store.segments.docs(old), **docs} if old else docs, old)
        left -= batch


def _real_study(ws, trials: int, first_run: int):
    """sweep-00's Optuna journal in `ws`: `trials` told trials (random-search's space, 20 reported
    epochs each, a third pruned), each naming its run r<first_run + number>."""
    import optuna

    from trialdeck.engine.presets import resolve
    from trialdeck.engine.tuning import study as studies
    from trialdeck.engine.tuning.space import sample

    spec = resolve("seed/random-search", [])
    url = studies.storage_url(ws, REAL, None)
    study = studies.create_or_load(REAL, url, preset=spec.preset, config=spec.config(), tune=spec.tune)
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))  # params only, in memory
    made = []
    for number in range(trials):
        asked = draw.ask()
        sample(asked, spec.tune)
        k = 0.05 + 0.001 * (number % 200)
        curve = {e: h["val_loss"] for e, h in enumerate(_history(k), 1)}
        pruned = number % 3 == 2
        made.append(optuna.trial.create_trial(
            params=asked.params, distributions=asked.distributions,
            state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
            value=None if pruned else curve[EPOCHS], intermediate_values=dict(list(curve.items())[:6 if pruned else EPOCHS]),
            user_attrs={"run_id": f"r{first_run + number}", "workspace": "bench"}))
        draw.tell(asked, 0.0)
    study.add_trials(made)
    return spec, study, url


def build_studies(root: Path, name: str, count: int, trials: int) -> dict[str, Any]:
    """A workspace of `count` ended studies of `trials` trials each (see the module's docstring)."""
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.tuning import study as studies
    from trialdeck.engine.workspace import Workspace

    home = root / name
    ws = Workspace(home).ensure()
    store = Store(ws)
    started = time.perf_counter()
    spec, study, url = _real_study(ws, trials, 1)
    config, states = spec.config(), ("completed", "completed", "pruned")
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}

    def run(number: int, seq: int, now: float) -> dict[str, Any]:
        trial = by_number[(number - 1) % trials]
        k = 0.05 + 0.001 * (trial.number % 200)
        start = 1.7e9 + 60 * number
        state = states[trial.number % 3]
        history = _history(k)[:6 if state == "pruned" else EPOCHS]
        return {"id": f"r{number}", "preset": spec.preset, "state": state, "priority": 0, "device": "cpu",
                "pinned": None, "config": {**config, "optimizer": {**config["optimizer"], "lr": trial.params["optimizer.lr"]}},
                "config_hash": f"h{number}", "created_at": start, "queued_at": start, "started_at": start + 1,
                "finished_at": start + 1 + 1.2 * len(history), f"{state}_at": start + 1 + 1.2 * len(history),
                "history": history, "events": [], "error": None, "study": f"sweep-{(number - 1) // trials:02d}",
                "trial": trial.number, "trial_id": trial._trial_id, "params": trial.params, "attempts": 1,
                "worker": None, "seq": seq, "summary": {"best_epoch": len(history), "monitor": "val_loss"}}

    _add_runs(store, count * trials, run)
    ended = {"state": "completed", "n_trials": trials, "finished_at": time.time(), "stopped_by": "trials"}
    mirror = studies.sync(store, study, spec.tune, study.user_attrs["trialdeck"], url=url, with_importances=True,
                          fields=ended)
    mirrored = store.list_trials(REAL)
    for k in range(1, count):  # the same study under other names, each trial naming its own run
        shift = k * trials
        docs = [{**t, "run_id": f"r{int(t['run_id'][1:]) + shift}"} for t in mirrored]
        store.sync_study(f"sweep-{k:02d}", {**{f: v for f, v in mirror.items() if f != "name"},
                                            "storage_url": studies.storage_url(ws, f"sweep-{k:02d}", None),
                                            "storage": studies.storage_url(ws, f"sweep-{k:02d}", None)}, docs)
    segments = home / "segments"
    return {"home": str(home), "studies": count, "trials": trials, "build_s": time.perf_counter() - started,
            "catalog_kb": (home / "catalog.json").stat().st_size / 1e3,
            "segments_mb": sum(p.stat().st_size for p in segments.iterdir()) / 1e6,
            "trial_files": sum(1 for p in segments.iterdir() if p.name.startswith("trials-"))}


def studies_figures(homes: dict[str, Path], repeats: int, cli) -> dict[str, dict[str, float]]:
    """`studies list` and `studies show sweep-00` (which reconciles with its journal first), real
    processes, the workspaces alternated call by call: median wall and peak resident memory."""
    calls = {"studies_list": ("studies", "list"), "studies_show": ("studies", "show", REAL)}
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in homes}
    order = list(homes.items())
    for _ in range(repeats):
        random.shuffle(order)
        for name, home in order:
            for key, args in calls.items():
                samples[name].setdefault(key, []).append(cli(home, *args))
    out: dict[str, dict[str, float]] = {}
    for name, got in samples.items():
        out[name] = {}
        for key, values in got.items():
            out[name][f"{key}_s"] = statistics.median(v[0] for v in values)
            out[name][f"{key}_rss_mb"] = max(v[1] for v in values)
    return out


def build_in_child(root: Path, name: str, count: int, trials: int) -> dict[str, Any]:
    """`build_studies` in a child process, its figures back as JSON."""
    proc = subprocess.run([sys.executable, __file__, str(root), name, str(count), str(trials)], capture_output=True,
                          text=True, timeout=1800, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"building {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    root_, name_, count_, trials_ = sys.argv[1:5]
    print(json.dumps(build_studies(Path(root_), name_, int(count_), int(trials_))))
