"""Getting a trained model out: write a run's kept weights beside its config, and load them back.

    from trialdeck.engine import load_model
    model = load_model("r3")            # a run of $TRIALDECK_HOME (or home=...)
    model = load_model("out/model.pt")  # what `trialdeck runs export r3 --model out/model.pt` wrote

`export_model` writes two files: PATH, the weights alone (a state_dict saved
with `torch.save`, so `torch.load(PATH, weights_only=True)` reads it without
trialdeck), and PATH's stem + `.toml` beside it, with `[config]` (the run's
fully resolved configuration) and `[export]` (the run, the epoch the weights
come from, the input shape and classes the network was built for, and the
normalisation its inputs need: `(x / pixel_max - mean) / std` per channel,
every value of it written, pixel_max 1 for float arrays). Folders missing
above PATH are made, as `torch.save` users expect.

Invariants:
- The weights are the ones the run kept: the checkpoint's `model`, which is
  the best epoch's when early stopping restored them (see training.tracker).
- Nothing is unpickled: checkpoints and exports load with `weights_only=True`.
- The network is rebuilt from the config with the same `build_model` the
  trainer used; shapes come from the run's data (read once, on the CPU) or,
  for an export, from its `[export]` table, so loading an export needs no data.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
import torch
from torch import nn

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput
from trialdeck.engine.presets.authoring import config_toml
from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.training.checkpoint import load_checkpoint, save_checkpoint
from trialdeck.engine.training.models import build_model
from trialdeck.engine.workspace import Workspace, atomic_write

__all__ = ["config_path_for", "export_model", "load_model"]

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin")


def config_path_for(weights: str | os.PathLike[str]) -> Path:
    """Where an export's config sits: the weights' path with `.toml` for its suffix."""
    return Path(weights).with_suffix(".toml")


def _checkpoint(ws: Workspace, record: Mapping[str, Any]) -> tuple[Path, dict[str, Any]]:
    path = ws.checkpoint_path(record["id"])
    if not path.exists():
        why = "it has not finished an epoch" if record.get("state") in ("queued", "running") else "it kept none"
        raise BadInput(f"{record['id']} has no checkpoint at {path} ({why}); nothing to export")
    return path, load_checkpoint(path)


def _data_facts(spec: RunSpec, ws: Workspace) -> dict[str, Any]:
    """What the network was built for and how its inputs were normalised, from the run's own data split."""
    # Deferred: the datasets pull in scikit-learn / torchvision, needed only here.
    from trialdeck.engine.datasets import data_facts

    data = data_facts(spec.data, seed=spec.train.seed, data_dir=ws.data_dir)
    facts = {"input_shape": list(data["shape"]), "classes": data["classes"], "class_names": list(data["class_names"]),
             "mean": list(data["mean"]), "std": list(data["std"]),
             "task": data["task"],  # (regression: `classes` counts targets)
             # Every value of the normalisation `(x / pixel_max - mean) / std`: float arrays are
             # standardised as they are, which the formula says with pixel_max 1.
             "pixel_max": data["pixel_max"] if data["pixel_max"] is not None else 1.0}
    return facts


def export_model(ws: Workspace, record: Mapping[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the run's kept weights to `path` and its config to `config_path_for(path)`; returns what was written."""
    weights = Path(path)
    if weights.suffix == ".toml":
        raise BadInput(f"--model {weights}: the weights file cannot end in .toml (its config is written to a .toml beside it); "
                       f"use e.g. {weights.with_suffix('.pt')}")
    _, payload = _checkpoint(ws, record)
    spec = RunSpec.model_validate(payload["config"])
    history = payload.get("history") or []
    kept = record.get("kept_epoch")
    meta: dict[str, Any] = {
        "run": record["id"], "preset": record.get("preset") or spec.preset, "state": record.get("state"),
        "checkpoint_epoch": int(payload["epoch"]) + 1, "final": bool(payload.get("final")),
        **_data_facts(spec, ws),
    }
    if isinstance(kept, int) and not isinstance(kept, bool):
        meta["kept_epoch"] = kept
        entry = next((h for h in history if h.get("epoch") == kept), None)
        if entry is not None:
            meta["kept_metrics"] = {k: v for k, v in entry.items() if v is not None}
    _make_parents(weights)
    save_checkpoint(weights, payload["model"])  # atomic, as a checkpoint is
    config = config_path_for(weights)
    header = (f"# Exported by trialdeck from run {record['id']}: the weights are in {weights.name} (a state_dict).\n"
              f"# Load it: from trialdeck.engine import load_model; model = load_model({str(weights)!r})\n")
    # Through config_toml: TOML has no null, and it leaves unset keys out the way presets do.
    body = tomli_w.dumps({"export": meta, "config": tomllib.loads(config_toml(payload["config"]))})
    atomic_write(config, (header + body).encode())
    return {"id": record["id"], "weights": str(weights), "config": str(config), "kept_epoch": meta.get("kept_epoch"),
            "checkpoint_epoch": meta["checkpoint_epoch"], "final": meta["final"]}


def _make_parents(weights: Path) -> None:
    """The folders above `weights`, made as `mkdir -p` would (after the run's checkpoint and data
    were read, so a refused export leaves no empty folder behind); what cannot be made is one line."""
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise BadInput(f"--model {weights}: cannot make folder {weights.parent}: a file of that name is in the way") from None
    except OSError as exc:
        raise BadInput(f"--model {weights}: cannot make folder {weights.parent}: {exc.strerror or exc}") from None


def _is_file_ref(source: str | os.PathLike[str]) -> bool:
    text = os.fspath(source)
    return isinstance(source, os.PathLike) or os.sep in text or text.endswith(WEIGHT_SUFFIXES) or Path(text).is_file()


def load_model(source: str | os.PathLike[str], home: str | os.PathLike[str] | None = None, *,
               device: str | torch.device = "cpu") -> nn.Module:
    """The network a run trained, with the weights it kept, in eval mode on `device`.

    `source` is a run id of the workspace `home` (default: $TRIALDECK_HOME,
    else ~/.trialdeck) or the weights file `trialdeck runs export --model`
    wrote (its .toml must sit beside it).
    """
    if _is_file_ref(source):
        model, _ = _load_export(Path(source))
    else:
        ws = Workspace.resolve(home)
        if not ws.catalog_path.exists():
            raise BadInput(f"no trialdeck workspace at {ws.root} (give home=..., or set TRIALDECK_HOME)")
        record = Store(ws).get_run(str(source))
        if record is None:
            raise BadInput(f"no run {source!r} in {ws.catalog_path}")
        _, payload = _checkpoint(ws, record)
        spec = RunSpec.model_validate(payload["config"])
        facts = _data_facts(spec, ws)
        model = build_model(spec.model, tuple(facts["input_shape"]), int(facts["classes"]))
        model.load_state_dict(payload["model"])
    return model.to(device).eval()


def _load_export(weights: Path) -> tuple[nn.Module, dict[str, Any]]:
    config = config_path_for(weights)
    for p in (weights, config):
        if not p.is_file():
            raise BadInput(f"{p} does not exist (an export is the weights file and a .toml of the same name beside it)")
    try:
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{config}: not a trialdeck export: {exc}") from None
    meta, cfg = doc.get("export"), doc.get("config")
    if not isinstance(meta, dict) or not isinstance(cfg, dict) or "input_shape" not in meta or "classes" not in meta:
        raise BadInput(f"{config}: not a trialdeck export: needs [export] with input_shape and classes, and [config]")
    spec = RunSpec.model_validate(cfg)
    model = build_model(spec.model, tuple(int(v) for v in meta["input_shape"]), int(meta["classes"]))
    model.load_state_dict(load_checkpoint(weights))  # weights_only: an export is data, never code
    return model, meta
