"""Record the curves behind tests/fixtures/mo_curves.json: a real two-objective study on the digits.

A study of 40 trials (random sampler, fixed seed, no pruner) through a real
engine: an MLP's hidden sizes and learning rate, 9 epochs each, objectives
val_acc (maximised) and the parameter count (minimised). Every trial's
per-epoch values (the `intermediate` the study records) and final values are
kept, so the pareto_halving pruner can be replayed on them
(tests/test_pareto_pruning.py, bench/bench_studies.py): what it would have
stopped, and whether the final front survives.

Usage: python bench/scripts/record_mo_curves.py [OUT [SEED]]   (a few minutes on a CPU)
tests/fixtures/mo_curves.json is SEED 7 (the tests' fixture); bench/bench_studies.py also
replays SEED 11, recorded to tests/fixtures/mo_curves_11.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

PRESET = textwrap.dedent("""
    extends = ["base/digits-mlp"]
    [train]
    epochs = 9
    seed = 0
    [tune]
    sampler = "random"
    trials = 40
    seed = {seed}
    ensemble = false
    pruner = "none"
    objectives = [{{ metric = "val_acc", direction = "maximize" }}, {{ metric = "parameters", direction = "minimize" }}]
    [tune.space]
    "model.hidden" = {{ choices = [[4], [8], [16], [32], [64], [128], [256], [32, 32], [64, 64], [128, 128]] }}
    "optimizer.lr" = {{ float = [1e-4, 3e-2], log = true }}
    """).lstrip()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "tests/fixtures/mo_curves.json"
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        preset = Path(tmp) / "mo-curves.toml"
        preset.write_text(PRESET.format(seed=seed))
        cli = [sys.executable, "-c", "from trialdeck.tui.cli import main; main()"]
        try:
            proc = subprocess.run([*cli, "tune", str(preset), "--wait", "--json", "--home", str(home)],
                                  capture_output=True, text=True, timeout=3600)
        finally:
            subprocess.run([*cli, "engine", "stop", "--home", str(home)], capture_output=True, timeout=120)
        if proc.returncode != 0:
            sys.exit(f"tune failed ({proc.returncode}):\n{proc.stderr}")
        study = json.loads(proc.stdout)
    trials = [{"number": t["number"], "params": t["params"], "values": t["values"],
               "steps": {k: v for k, v in t["intermediate"].items()}}
              for t in study["trials"] if t["state"] == "complete"]
    head = json.dumps({"directions": study["directions"], "metrics": ["val_acc", "parameters"], "epochs": 9,
                       "pareto": study["pareto"]})
    rows = ",\n".join(json.dumps(t) for t in trials)  # one trial a line
    out.write_text(f"{head[:-1]}, \"trials\": [\n{rows}\n]}}\n")
    print(f"{len(trials)} trials, front {study['pareto']} -> {out}")


if __name__ == "__main__":
    main()
