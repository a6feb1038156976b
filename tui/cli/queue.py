"""`trialdeck queue`: list, cancel, reorder and clear queued runs."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from trialdeck.engine.errors import BadInput
from trialdeck.engine.types import RunState
from trialdeck.tui.cli.common import (
    HomeOpt,
    JsonOpt,
    emit,
    find_run,
    handle_errors,
    open_store,
    workspace,
)

app = typer.Typer(help="Inspect and reorder the queue.", no_args_is_help=True)


@app.command("list")
@handle_errors
def queue_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Queued runs in dispatch order (priority, then enqueue time), and what runs now."""
    store = open_store(home)
    queued = store.queued()
    running = store.list_runs("running", omit=("config", "history", "events"))
    rows = [{"id": r["id"], "state": r["state"], "preset": r["preset"], "priority": r.get("priority", 0),
             "device": r.get("device"), "slot": r.get("slot"), "position": None} for r in running]
    rows += [{"id": r["id"], "state": r["state"], "preset": r["preset"], "priority": r.get("priority", 0),
              "device": r.get("device"), "slot": None, "position": i + 1} for i, r in enumerate(queued)]
    if as_json:
        emit(rows)
        return
    if not rows:
        print("the queue is empty")
    for r in rows:
        where = r["slot"] or f"#{r['position']}"
        print(f"{r['id']:<7} {r['state']:<8} {where:<9} prio {r['priority']:<4} {r['preset']}")


@app.command("cancel")
@handle_errors
def queue_cancel(
    run_ids: Annotated[list[str], typer.Argument(help="Run id(s), e.g. r12.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel queued runs (removed from the queue) or running ones (stopped within a second)."""
    from trialdeck.engine.runtime.control import actions as control
    from trialdeck.engine.runtime.control.client import notify

    ws = workspace(home)
    store = open_store(home)
    out = []
    for run_id in run_ids:
        record, how = control.cancel(store, run_id, lambda: notify(ws))
        state = record["state"]
        if state == RunState.RUNNING:  # asked to stop: wait for the engine to do it
            state = _await_state(store, record["id"], timeout=10.0)["state"]
        out.append({"id": record["id"], "state": state})
    if as_json:
        emit(out if len(out) > 1 else out[0])
    else:
        for r in out:
            print(f"{r['id']} {r['state']}")


def _await_state(store, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get_run(run_id)
        if record["state"] != RunState.RUNNING:
            return record
        time.sleep(0.05)
    return store.get_run(run_id)


@app.command("move")
@handle_errors
def queue_move(
    run_id: Annotated[str, typer.Argument(help="A queued run id.")],
    top: Annotated[bool, typer.Option("--top", help="Make it the next to run.")] = False,
    priority: Annotated[int | None, typer.Option("--priority", help="Set its priority instead.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reorder the queue: --top, or --priority N."""
    store = open_store(home)
    record = find_run(store, run_id)
    if top == (priority is not None):
        raise BadInput("queue move: give exactly one of --top or --priority N")
    record = store.move_top(record["id"]) if top else store.set_priority(record["id"], priority)
    if as_json:
        emit({"id": record["id"], "priority": record["priority"]})
    else:
        print(f"{record['id']} priority {record['priority']}")


@app.command("clear")
@handle_errors
def queue_clear(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel every queued run (running runs go on)."""
    n = open_store(home).clear_queue()
    if as_json:
        emit({"cancelled": n})
    else:
        print(f"cancelled {n} queued run(s)")
