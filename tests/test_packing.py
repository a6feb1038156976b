"""Packing several runs onto one device changes no run's result (same seed, same final metric)."""

from __future__ import annotations

import json

import pytest

from tests.deck import cli, until
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace

pytestmark = pytest.mark.slow
SETS = ["--set", "train.epochs=4", "--set", "data.batch_size=32"]


def finals(home, presets: list[str], *, packed: bool) -> dict[str, list[float]]:
    # Two slots either way, so each worker gets the same torch thread count (CPU float results
    # depend on it); only whether the runs share the device at the same time differs.
    started = cli(home, "engine", "start", "--cpu-slots", "2")
    assert started.returncode == 0, started.stderr
    try:
        ids = {}
        for preset in presets:
            out = cli(home, "run", preset, *SETS, "--json", *([] if packed else ["--wait"]))
            assert out.returncode == 0, out.stderr
            ids[preset] = json.loads(out.stdout)["id"]
        store = Store(Workspace(home).ensure())

        def ended() -> dict | None:
            records = {p: store.get_run(i) for p, i in ids.items()}
            return records if all(r["state"] in ("completed", "failed") for r in records.values()) else None

        records = until(ended, 240, f"{sorted(ids.values())} to end", interval=0.2)
        assert all(r["state"] == "completed" for r in records.values()), {p: r["state"] for p, r in records.items()}
        if packed:
            first, second = (records[p] for p in presets)
            assert second["started_at"] < first["finished_at"], "the runs did not train side by side"
        return {p: [h["val_loss"] for h in r["history"]] for p, r in records.items()}
    finally:
        cli(home, "engine", "stop")


def test_two_packed_runs_give_the_results_of_two_runs_alone(tmp_path):
    presets = ["seed/dropout", "seed/batch-norm"]
    alone = finals(tmp_path / "alone", presets, packed=False)
    packed = finals(tmp_path / "packed", presets, packed=True)
    for preset in presets:
        assert packed[preset] == pytest.approx(alone[preset], rel=1e-4, abs=1e-6), preset
