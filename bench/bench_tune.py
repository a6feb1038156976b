"""Wall time of `trialdeck tune` versus a plain in-process Optuna script doing the same trials.

Both sides run the same study: a TPE search (fixed seed, no pruner) over the
learning rate and the first hidden width of `base/digits-mlp`, N trials of E
epochs on the 8x8 digits, CPU, minimising the best val_loss.

- tune: `trialdeck tune PRESET --trials N --wait --json` in a fresh workspace
  whose engine is already up and warm (started first, then one 1-epoch run so
  its worker has imported torch and loaded the digits). Timed from launching
  the CLI to its exit: CLI start, study creation, every ask/dispatch/train/tell
  through the engine, TinyDB mirroring, and the CLI noticing the end.
- plain: `optuna.create_study(...).optimize(objective, n_trials=N)` in this
  process, with the study in a JournalStorage file (the storage the engine
  uses for a workspace study) and the objective built from the same pieces:
  `trialdeck.engine.tuning.space.sample` on the trial, `apply_params` on the same
  resolved base config, `trialdeck.engine.training.trainer.train` (no run directory, so no
  checkpoint), the value by `trial_value`. Warmed up the same way (one
  1-epoch training first). Torch threads: the process default, which is what
  the engine gives its one CPU worker here (cpu_count // slots).

The box is shared, so the sides run plain, tune, tune, plain and their sums are
compared; since both sides train exactly the same trials, a second ratio takes
the epochs' time as the plain side's, leaving trialdeck's own overhead.

Then, from the workspace's catalogue, where the tune side's extra time goes:
the gap between one trial run finishing and the next starting (tell, ask,
TinyDB sync, dispatch), the time inside a run outside its epochs (worker
setup, recorder, final checkpoint), and the CLI's start and end.
Usage: python bench/bench_tune.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.25
PRESET = """
    description = "bench: TPE over lr and width on digits, no pruner"
    extends = ["base/digits-mlp"]

    [tune]
    sampler = "tpe"
    pruner = "none"
    metric = "val_loss"
    direction = "minimize"
    seed = 0

    [tune.space]
    "optimizer.lr" = { float = [1e-4, 1e-1], log = true }
    "model.hidden.0" = { int = [32, 512] }
"""


def _trialdeck() -> list[str]:
    exe = shutil.which("trialdeck")
    return [exe] if exe else [sys.executable, "-c", "from trialdeck.tui.cli import main; main()"]


def _cli(home: Path, *args: str, timeout: float = 1800, cpu: bool = True) -> subprocess.CompletedProcess:
    """`trialdeck ARGS --home HOME`; with `cpu`, GPUs are hidden from it (and from an engine it starts)."""
    env = {**os.environ, "TRIALDECK_HOME": str(home), **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {})}
    env.pop("TRIALDECK_DEBUG", None)
    proc = subprocess.run([*_trialdeck(), *args, "--home", str(home)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"`trialdeck {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _tune_side(preset: Path, home: Path, study: str, trials: int, epochs: int) -> dict:
    """One `trialdeck tune --wait` on the workspace's already warm engine, and where its time went."""
    from trialdeck.engine.catalogue.store import Store

    t0 = time.time()
    proc = _cli(home, "tune", str(preset), "--study", study, "--trials", str(trials),
                "--set", f"train.epochs={epochs}", "--wait", "--json")
    wall = time.time() - t0
    out = json.loads(proc.stdout)
    runs = sorted((r for r in Store(home).list_runs() if r.get("study") == study), key=lambda r: r["created_at"])
    train_s = sum(h["seconds"] for r in runs for h in r["history"])
    in_run = [r["finished_at"] - r["started_at"] for r in runs]
    gaps = [b["started_at"] - a["finished_at"] for a, b in zip(runs, runs[1:])]
    return {
        "wall": wall,
        "trials": len(out["trials"]),
        "best": out["best"]["value"] if out.get("best") else None,
        "train_s": train_s,
        "in_run_overhead_s": sum(in_run) - train_s,
        "gaps_s": sum(gaps),
        "gap_mean_s": statistics.mean(gaps) if gaps else 0.0,
        "gap_max_s": max(gaps) if gaps else 0.0,
        "cli_to_first_start_s": runs[0]["started_at"] - t0 if runs else 0.0,
        "last_finish_to_cli_exit_s": t0 + wall - runs[-1]["finished_at"] if runs else 0.0,
        "params": [t["params"] for t in sorted(out["trials"], key=lambda t: t["number"])],
    }


def _plain_side(preset: Path, journal: Path, trials: int, epochs: int) -> dict:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from trialdeck.engine.presets import resolve
    from trialdeck.engine.training.trainer import train
    from trialdeck.engine.tuning.samplers import make_sampler
    from trialdeck.engine.tuning.space import apply_params, sample
    from trialdeck.engine.tuning.study import trial_value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = resolve(str(preset), [f"train.epochs={epochs}"])
    tune, base = spec.tune, spec.config()

    train_s = 0.0
    objective_s = 0.0

    def objective(trial) -> float:
        nonlocal train_s, objective_s
        o0 = time.perf_counter()
        params = sample(trial, tune)
        trial_spec = apply_params(base, params, f"bench trial {trial.number}")
        result = train(trial_spec, device="cpu")
        if result.error:
            raise RuntimeError(result.error)
        train_s += sum(h.seconds for h in result.history)
        value = trial_value(tune, [h.to_json() for h in result.history])
        objective_s += time.perf_counter() - o0
        return value

    storage = JournalStorage(JournalFileBackend(str(journal)))
    t0 = time.time()
    study = optuna.create_study(study_name="plain", storage=storage, sampler=make_sampler(tune),
                                direction=tune.direction)
    study.optimize(objective, n_trials=trials)
    wall = time.time() - t0
    return {
        "wall": wall,
        "trials": len(study.trials),
        "best": study.best_value,
        "train_s": train_s,
        "optuna_s": wall - objective_s,  # ask, tell, storage writes: everything outside the objective
        "params": [t.params for t in study.trials],
    }


def _sum(sides: list[dict], key: str) -> float:
    return sum(side[key] for side in sides)


def run(quick: bool = False) -> dict:
    """plain, tune, tune, plain (so a load change on the shared box hits both sides alike); sums compared."""
    from trialdeck.engine.presets import resolve
    from trialdeck.engine.training.trainer import train

    trials, epochs = (6, 3) if quick else (30, 10)
    tmp = Path(tempfile.mkdtemp(prefix="trialdeck-bench-tune."))
    home = tmp / "ws"
    try:
        preset = tmp / "bench-tune.toml"
        preset.write_text(textwrap.dedent(PRESET).lstrip())
        train(resolve("base/digits-mlp", ["train.epochs=1"]), device="cpu")  # warm this process: torch, digits
        _cli(home, "engine", "start")
        try:
            # Warm the engine's worker the same way (it stays alive between runs).
            _cli(home, "run", "base/digits-mlp", "--set", "train.epochs=1", "--wait", "--json")
            plain = [_plain_side(preset, tmp / "plain-1.journal", trials, epochs)]
            tune = [_tune_side(preset, home, "bench-1", trials, epochs),
                    _tune_side(preset, home, "bench-2", trials, epochs)]
            plain.append(_plain_side(preset, tmp / "plain-2.journal", trials, epochs))
        finally:
            _cli(home, "engine", "stop")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import torch

    params = [side.pop("params") for side in (*plain, *tune)]
    same = sum(1 for column in zip(*params) if all(p == column[0] for p in column))
    tune_wall, plain_wall = _sum(tune, "wall"), _sum(plain, "wall")
    tune_other = tune_wall - _sum(tune, "train_s")
    return {
        "trials": trials,
        "epochs": epochs,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "storage_plain": "JournalStorage(JournalFileBackend) file",
        "tune": tune,
        "plain": plain,
        "same_params_trials": same,
        "ratio": tune_wall / plain_wall,
        # The same trials train on both sides (same params, same seeds): with the epochs' time taken as the
        # plain side's, what is left is trialdeck's own overhead, free of the shared box's load swings.
        "ratio_equal_training": (tune_other + _sum(plain, "train_s")) / plain_wall,
        "target": TARGET,
    }


def report(r: dict) -> list[tuple[str, str, str, str]]:
    """(figure, trialdeck, reference, target) rows for bench/run_all.py."""
    n, e = r["trials"], r["epochs"]
    return [
        (f"TPE study, {n} trials x {e} epochs on digits (wall, 2 passes each side)",
         f"{_sum(r['tune'], 'wall'):.2f} s", f"{_sum(r['plain'], 'wall'):.2f} s plain in-process Optuna loop",
         f"ratio {r['ratio']:.2f} (<= {r['target']:.2f}); {r['ratio_equal_training']:.2f} with equal epoch times"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 trials x 3 epochs instead of 30 x 10")
    args = parser.parse_args(argv)
    r = run(quick=args.quick)
    n = r["trials"]
    print(f"TPE study, {n} trials x {r['epochs']} epochs on digits, cpu ({r['cpus']} cores, "
          f"{r['torch_threads']} torch threads); plain side: {r['storage_plain']}; order plain, tune, tune, plain; "
          f"{r['same_params_trials']}/{n} trials sampled identical params in all four")
    print(f"{'side':<8}{'wall s':>9}{'per trial s':>13}{'epochs s':>10}{'other s':>9}  best val_loss")
    for name, side in [("plain", r["plain"][0]), ("tune", r["tune"][0]), ("tune", r["tune"][1]), ("plain", r["plain"][1])]:
        print(f"{name:<8}{side['wall']:>9.2f}{side['wall'] / n:>13.3f}{side['train_s']:>10.2f}"
              f"{side['wall'] - side['train_s']:>9.2f}  {side['best']:.4f}")
    for i, p in enumerate(r["plain"], 1):
        print(f"plain {i}: outside the objective (ask/tell/journal) {p['optuna_s']:.2f} s")
    for i, t in enumerate(r["tune"], 1):
        print(f"tune {i}: CLI start -> first trial running {t['cli_to_first_start_s']:.2f} s; between trials "
              f"{t['gaps_s']:.2f} s (mean {t['gap_mean_s'] * 1e3:.0f} ms, max {t['gap_max_s'] * 1e3:.0f} ms); "
              f"in runs outside epochs {t['in_run_overhead_s']:.2f} s; last trial done -> CLI exit "
              f"{t['last_finish_to_cli_exit_s']:.2f} s")
    print(f"tune / plain = {r['ratio']:.2f} (target <= {r['target']:.2f}); "
          f"with equal epoch times: {r['ratio_equal_training']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
