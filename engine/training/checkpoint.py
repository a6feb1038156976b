"""A run's checkpoint: what it holds (`CheckpointState`), and saving and loading it.

One file per run (`runs/<id>/checkpoint.pt`), written by train() and by each
ensemble member alike, so either can resume the other's. Invariants:
- Atomic: a kill at any moment leaves either the old or the new checkpoint.
- Data, never code: loaded with `torch.load(..., weights_only=True)`.
- The payload keys are the fields of `CheckpointState`; a checkpoint written
  before this module existed has the same keys and loads the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trialdeck.engine.workspace import CHECKPOINT_NAME, atomic_write

__all__ = ["CHECKPOINT_NAME", "CheckpointState", "Partial", "load_checkpoint", "read_checkpoint", "save_checkpoint"]


@dataclass(frozen=True)
class Partial:
    """Where a stop cut an epoch short: steps done, its batch order, its summed loss so far."""

    step: int
    perm: torch.Tensor
    total: float


@dataclass(frozen=True)
class CheckpointState:
    """Everything a resume needs: weights, optimiser, schedule, early stopping, random
    streams, history, and where inside an epoch a stop came (`partial`)."""

    config: dict[str, Any]
    """The fully resolved configuration the run trains (`RunSpec.config()`)."""
    config_hash: str
    """A resume goes on only from a checkpoint of the same configuration."""
    epoch: int
    """The last whole epoch, 0-based (-1: none yet)."""
    model: dict[str, torch.Tensor]
    """The weights the run holds: the best epoch's once early stopping restored them."""
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    early_stopping: dict[str, Any] | None
    best_model: dict[str, torch.Tensor] | None
    generator: torch.Tensor
    """The run's batch-order generator (16 bytes on CUDA, 5056 on a CPU)."""
    cpu_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    """Dropout's masks on a GPU come from the CUDA generator."""
    history: list[dict[str, Any]]
    final: bool
    """Written when the run ended (not a resumable point in its middle)."""
    partial: Partial | None = None

    def to_payload(self) -> dict[str, Any]:
        partial = self.partial
        return {
            "config": self.config,
            "config_hash": self.config_hash,
            "epoch": self.epoch,
            "model": self.model,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "early_stopping": self.early_stopping,
            "best_model": self.best_model,
            "generator": self.generator,
            "cpu_rng": self.cpu_rng,
            "cuda_rng": self.cuda_rng,
            "history": self.history,
            "final": self.final,
            "partial": {"step": partial.step, "perm": partial.perm.cpu(), "total": partial.total} if partial else None,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> CheckpointState:
        raw = payload.get("partial")
        partial = Partial(int(raw["step"]), raw["perm"], float(raw["total"])) if raw else None
        return cls(
            config=payload["config"], config_hash=payload["config_hash"], epoch=int(payload["epoch"]),
            model=payload["model"], optimizer=payload["optimizer"], schedule=payload["schedule"],
            early_stopping=payload.get("early_stopping"), best_model=payload.get("best_model"),
            generator=payload["generator"], cpu_rng=payload["cpu_rng"], cuda_rng=payload.get("cuda_rng"),
            history=list(payload["history"]), final=bool(payload.get("final")), partial=partial,
        )


def save_checkpoint(path: Path, payload: dict[str, Any] | CheckpointState) -> None:
    """Atomic: a kill at any moment leaves either the old or the new checkpoint."""
    if isinstance(payload, CheckpointState):
        payload = payload.to_payload()
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getbuffer())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The raw payload (a dict keyed like CheckpointState's fields)."""
    # weights_only: a checkpoint is data, never code (no unpickling of arbitrary objects).
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return payload


def read_checkpoint(path: Path) -> CheckpointState:
    return CheckpointState.from_payload(load_checkpoint(path))
