"""Deterministic workspaces for the TUI's tests, snapshots and benchmark.

Shipped in the package (like optuna.testing) so tests and bench/bench_tui.py
build the same data: runs in every state with fixed timestamps, their
metrics.jsonl in the recorder's real format, a log, and a study with trials.
Everything goes through the real Store; only the clock is fixed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from trialdeck.engine.catalogue.metrics import JsonlMetricsWriter
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets import preset_roots, resolve
from trialdeck.engine.runs.folder import LOG_NAME, METRICS_NAME
from trialdeck.engine.types import RunRecord, RunState
from trialdeck.engine.workspace import Workspace

T0 = 1_767_225_600.0
"""2026-01-01 00:00:00 UTC: every seeded timestamp is T0 + a fixed offset."""
NOW = T0 + 3600.0
"""The clock tests give the app."""


def fixed_clock() -> float:
    return NOW


def curve(epoch: int, seed: int = 0) -> dict[str, float]:
    """A plausible, deterministic learning curve."""
    train = 2.3 * math.exp(-0.35 * epoch) + 0.05 + 0.01 * ((epoch * 7 + seed) % 5)
    val = 2.3 * math.exp(-0.3 * epoch) + 0.12 + 0.015 * ((epoch * 3 + seed) % 4)
    acc = min(0.99, 1.0 - 0.9 * math.exp(-0.45 * epoch) - 0.01 * ((epoch + seed) % 3))
    return {"train_loss": round(train, 5), "val_loss": round(val, 5), "val_acc": round(acc, 5)}


def write_metrics(ws: Workspace, run_id: str, epochs: int, start: float, *, steps: int = 4, lr0: float = 0.1,
                  seed: int = 0, events: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A run's metrics.jsonl as the recorder writes it; returns the history entries."""
    run_dir = ws.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    history = []
    with JsonlMetricsWriter(run_dir / METRICS_NAME) as w:
        w.write({"t": start, "kind": "start", "device": "cpu", "params": 83_466, "train_samples": 1437,
                 "val_samples": 360, "steps_per_epoch": steps, "start_epoch": 0})
        t = start
        for e in range(1, epochs + 1):
            c = curve(e, seed)
            for s in range(1, steps + 1):
                t += 0.25
                w.write({"t": t, "epoch": e, "step": s, "loss": round(c["train_loss"] * (1.1 - 0.05 * s), 5)})
            entry = {"epoch": e, **c, "lr": lr0 * 0.5 ** ((e + 1) // 10), "seconds": 1.0}
            history.append(entry)
            w.write({"t": t, "kind": "epoch", **entry})
            for ev in events or ():
                if ev.get("epoch") == e:
                    w.write({"t": t, "kind": "event", "event": ev})
    with open(run_dir / LOG_NAME, "w", encoding="utf-8") as f:
        f.write("00:00:00 worker 4242 starting run on cpu (attempt 1)\n")
        for h in history:
            f.write(f"00:00:{h['epoch']:02d} epoch {h['epoch']} train_loss {h['train_loss']:.4f} "
                    f"val_loss {h['val_loss']:.4f} val_acc {h['val_acc']:.4f}\n")
    return history


def _spec(name: str, ws: Workspace, sets: list[str] | None = None):
    return resolve(name, sets or [], preset_roots(ws.presets_dir))


def _new_run(store: Store, ws: Workspace, preset: str, sets: list[str] | None = None, priority: int = 0) -> RunRecord:
    spec = _spec(preset, ws, sets)
    return store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash, priority=priority)


def _finish(store: Store, run_id: str, state: RunState, *, start: float, end: float, history: list[dict],
            events: list[dict], error: str | None = None, slot: str = "cpu.0", **fields: Any) -> None:
    store.transition(run_id, RunState.RUNNING, slot=slot, device="cpu", worker=4242,
                     add_events=[{"kind": "started", "epoch": None, "message": f"started on {slot}", "time": start}])
    store.transition(run_id, state, error=error, history=history, add_events=events)
    store.update_run(run_id, created_at=start - 5, queued_at=start - 5, started_at=start, finished_at=end,
                     **{f"{state.value}_at": end}, **fields)


def seed_workspace(ws: Workspace, *, study: bool = True) -> dict[str, str]:
    """Runs r1..r7 in every state, r8..r10 as study trials; returns {role: run id}."""
    store = Store(ws)
    ids: dict[str, str] = {}

    # r1: completed step decay, 12 epochs.
    r = _new_run(store, ws, "seed/step-decay", ["train.epochs=12"])
    ids["completed"] = r["id"]
    start = T0 + 60
    lr_event = {"kind": "lr_changed", "epoch": 9, "message": "learning rate 0.1 -> 0.05", "time": start + 9}
    hist = write_metrics(ws, r["id"], 12, start, events=[lr_event])
    _finish(store, r["id"], RunState.COMPLETED, start=start, end=start + 12, history=hist, events=[lr_event], kept_epoch=12)

    # r2: early stopped.
    r = _new_run(store, ws, "seed/early-stopping")
    ids["early_stopped"] = r["id"]
    start = T0 + 120
    best = curve(4, seed=1)["val_loss"]  # the run's monitor was best at epoch 4, and it kept those weights
    es = {"kind": "early_stopped", "epoch": 9, "time": start + 9,
          "message": f"val_loss did not improve by more than 0 for 5 epochs; best {best:.4f} at epoch 4; "
                     "restored the best weights"}
    hist = write_metrics(ws, r["id"], 9, start, seed=1, events=[es])
    _finish(store, r["id"], RunState.EARLY_STOPPED, start=start, end=start + 9, history=hist, events=[es], kept_epoch=4,
            summary={"monitor": "val_loss", "best_epoch": 4, "best_value": best, "kept_epoch": 4})

    # r3: failed.
    r = _new_run(store, ws, "seed/dropout")
    ids["failed"] = r["id"]
    start = T0 + 180
    fail = {"kind": "failed", "epoch": 3, "message": "CUDA out of memory at epoch 3", "time": start + 3}
    hist = write_metrics(ws, r["id"], 2, start, seed=2)
    _finish(store, r["id"], RunState.FAILED, start=start, end=start + 3, history=hist, events=[fail],
            error="CUDA out of memory at epoch 3")

    # r4: cancelled while queued.
    r = _new_run(store, ws, "seed/batch-norm")
    ids["cancelled"] = r["id"]
    store.transition(r["id"], RunState.CANCELLED, add_events=[
        {"kind": "cancelled", "epoch": None, "message": "cancelled while queued", "time": T0 + 210}])
    store.update_run(r["id"], created_at=T0 + 200, queued_at=T0 + 200, finished_at=T0 + 210, cancelled_at=T0 + 210)

    # r5: running, 6 of 20 epochs done, followed from its metrics stream.
    r = _new_run(store, ws, "seed/l1-l2")
    ids["running"] = r["id"]
    start = T0 + 3000
    store.transition(r["id"], RunState.RUNNING, slot="cpu.0", device="cpu", worker=4243,
                     add_events=[{"kind": "started", "epoch": None, "message": "started on cpu.0", "time": start}])
    hist = write_metrics(ws, r["id"], 6, start, seed=3)
    store.update_run(r["id"], history=hist, created_at=start - 1, queued_at=start - 1, started_at=start)

    # r6, r7: queued, r7 at a higher priority (dispatched first).
    for role, preset, prio, at in (("queued", "seed/augmentation", 0, T0 + 3100), ("queued_high", "seed/l1-l2", 5, T0 + 3200)):
        r = _new_run(store, ws, preset, priority=prio)
        ids[role] = r["id"]
        store.update_run(r["id"], created_at=at, queued_at=at)

    if study:
        ids.update(seed_study(store, ws))
    return ids


ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "leaky_relu", "elu", "silu")


def seed_study(store: Store, ws: Workspace, name: str = "seed-activations", trials: int = 7) -> dict[str, str]:
    """A finished-ish study: complete, pruned and running trials with params, values and intermediates."""
    ids: dict[str, str] = {}
    docs: list[Mapping[str, Any]] = []
    for n in range(trials):
        act = ACTIVATIONS[n % len(ACTIVATIONS)]
        lr = round(10 ** (-4 + 3 * ((n * 37) % 11) / 10), 6)
        state = "pruned" if n % 5 == 3 else "running" if n == trials - 1 else "complete"
        curve_vals = {str(e): curve(e, n)["val_acc"] for e in range(1, (4 if state == "pruned" else 10) + 1)}
        if state == "running":
            curve_vals = {k: v for k, v in curve_vals.items() if int(k) <= 5}
        value = max(curve_vals.values()) if state == "complete" else None
        run_id = None
        if n < 3:
            r = _new_run(store, ws, "seed/activations", [f'model.activation="{act}"', "train.epochs=10"])
            run_id = r["id"]
            ids[f"trial{n}"] = run_id
            start = T0 + 400 + 20 * n
            hist = write_metrics(ws, run_id, 10, start, seed=n)
            _finish(store, run_id, RunState.COMPLETED, start=start, end=start + 10, history=hist, events=[],
                    slot="cpu.0", kept_epoch=10)
            store.update_run(run_id, study=name, trial=n)
        docs.append({"number": n, "state": state, "value": value, "params": {"model.activation": act, "optimizer.lr": lr},
                     "run_id": run_id, "intermediate": curve_vals, "started_at": T0 + 400 + 20 * n,
                     "finished_at": None if state == "running" else T0 + 410 + 20 * n,
                     "duration": None if state == "running" else 10.0 + n, "host": "box",
                     "prune_reason": f"val_acc {curve_vals['4']:.4f} at step 4 was below the median" if state == "pruned"
                     else None})
    store.upsert_trials(name, docs)
    complete = [d for d in docs if d["state"] == "complete"]
    best = max(complete, key=lambda d: d["value"])
    counts: dict[str, int] = {}
    for d in docs:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    store.upsert_study(name, {
        "preset": "seed/activations", "config": _spec("seed/activations", ws).config(),
        "metric": "val_acc", "direction": "maximize", "reduce": "best",
        "sampler": "grid", "pruner": "none", "state": "running", "counts": counts, "n_trials": trials,
        "n_done": sum(v for k, v in counts.items() if k != "running"),
        "best": {"number": best["number"], "value": best["value"], "params": best["params"], "run_id": best["run_id"]},
        "importances": {"model.activation": 0.71, "optimizer.lr": 0.29}, "synced_at": T0 + 600,
    })
    return ids


def screen_text(app) -> str:
    """What the running app's terminal shows now, as plain text (one line per row)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


async def wait_for(pilot, predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Let the app run until `predicate()` holds (it reads app state), or fail after `timeout` s."""
    import time as _time

    deadline = _time.monotonic() + timeout
    while True:
        await pilot.pause()
        if predicate():
            return
        if _time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await pilot.pause(0.02)
