"""A progress bar on stderr for foreground training (only when stderr is a terminal)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trialdeck.engine.training.callbacks import TrainerCallback


class EpochProgress(TrainerCallback):
    def __init__(self, epochs: int, label: str) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            console=Console(stderr=True), transient=False,
        )
        self.task = self.progress.add_task(label or "train", total=epochs, info="")

    def on_start(self, info: dict) -> None:
        self.progress.start()
        self.progress.update(self.task, completed=info.get("start_epoch", 0),
                             info=f"{info['device']}, {info['params']:,} params")

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        self.progress.update(self.task, info=f"epoch {epoch} step {step} loss {loss:.4f}")

    def on_epoch(self, record, events):
        self.progress.update(self.task, completed=record.epoch,
                             info=f"val_loss {record.val_loss:.4f} " + (
                                 f"val_acc {record.val_acc:.4f}" if record.val_acc is not None  # a regression: val_mae
                                 else f"val_mae {record.val_mae:.4f}") + f" lr {record.lr:.3g}")
        for e in events:
            self.progress.console.print(f"  {e.kind}: {e.message}")
        return None

    def on_event(self, event) -> None:
        if event.kind in ("failed", "nan_loss", "resumed"):
            self.progress.console.print(f"  {event.kind}: {event.message}")

    def log(self, line: str) -> None:
        pass

    def close(self) -> None:
        self.progress.stop()
