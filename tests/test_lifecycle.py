"""The run lifecycle (trialdeck.engine.runs.lifecycle) on a real TinyDB catalogue, no engine.

Every edge of the one table (types.LIFECYCLE) is walked through the lifecycle's
own door, from a run brought to the edge's source state the same way; each
change leaves the state the table names and the event a person reads. What the
table lacks is refused and leaves the run as it was. Requeue decisions follow
`recovery` (resume from the checkpoint, start over, leave) and never happen
while the engine stops or for a run trained in a terminal; the engine hears
each ending it sees once (on_end).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.runs.facts import (
    CancelOverdue,
    Crashed,
    Ended,
    EndRecorded,
    Lost,
    Place,
    PlaceBack,
    Refused,
    Started,
)
from trialdeck.engine.runs.lifecycle import Lifecycle
from trialdeck.engine.types import LIFECYCLE, TRANSITIONS, Cause, RunState, Transition
from trialdeck.engine.workspace import Workspace

Q, R, INT = RunState.QUEUED, RunState.RUNNING, RunState.INTERRUPTED
F, C = RunState.FAILED, RunState.CANCELLED


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(Workspace(tmp_path / "ws").ensure())


def new_run(store: Store) -> str:
    return store.create_run(preset="p", config={}, config_hash="h")["id"]


def bring(lc: Lifecycle, store: Store, state: RunState) -> str:
    """A new run brought to `state` through the lifecycle."""
    run_id = new_run(store)
    if state is Q:
        return run_id
    lc.apply(Started(run_id, Place("cpu.0", "cpu"), pid=4242))
    match state:
        case RunState.INTERRUPTED:
            lc.apply(Lost(run_id, "interrupted: its worker went away", requeue=False))
        case RunState.FAILED | RunState.CANCELLED | RunState.COMPLETED:
            lc.apply(Ended(run_id, state, "it failed" if state is F else None))
    assert store.get_run(run_id)["state"] == state.value
    return run_id


Step = Callable[[Lifecycle, str], object]

EDGES: dict[Transition, tuple[Step, str | None]] = {
    Transition(Q, R, Cause.STARTED): (lambda lc, r: lc.apply(Started(r, Place("gpu0.1", "cuda:0"), pid=7)),
                                      "started on gpu0.1"),
    **{Transition(R, end, Cause.ENDED): ((lambda lc, r, end=end: lc.apply(Ended(r, end, "why" if end in (F, INT) else None))),
                                         None)
       for end in (RunState.COMPLETED, RunState.EARLY_STOPPED, RunState.PRUNED, F, C, INT)},
    Transition(R, F, Cause.CRASHED): (lambda lc, r: lc.apply(Crashed(r, "worker process was killed by signal SIGKILL")),
                                      "worker process was killed by signal SIGKILL"),
    Transition(R, C, Cause.CRASHED): (lambda lc, r: lc.apply(Crashed(r, "killed", cancel_asked=True)),
                                      "cancelled by the user (worker stopped)"),
    Transition(R, INT, Cause.LOST): (lambda lc, r: lc.apply(Lost(r, "interrupted: Dask worker w1 left", requeue=False)),
                                   "interrupted: Dask worker w1 left"),
    Transition(R, C, Cause.CANCEL_OVERDUE): (lambda lc, r: lc.apply(CancelOverdue(r, "worker stopped")),
                                             "cancelled by the user (worker stopped)"),
    Transition(Q, F, Cause.REFUSED): (lambda lc, r: lc.apply(Refused(r, "device 'cuda' was asked for")),
                                      "device 'cuda' was asked for"),
    Transition(INT, F, Cause.REFUSED): (lambda lc, r: lc.apply(Refused(r, "device 'cuda:3' was asked for")),
                                      "device 'cuda:3' was asked for"),
    **{Transition(source, C, Cause.CANCELLED): ((lambda lc, r: lc.cancel(r, "cancelled by the user")), "cancelled by the user")
       for source in (Q, R, INT)},
    Transition(Q, C, Cause.DEPENDENCY): (lambda lc, r: lc.cancel(r, "dependency r3 failed", cause=Cause.DEPENDENCY),
                                         "dependency r3 failed"),
    Transition(INT, Q, Cause.REQUEUED): (lambda lc, r: lc.apply(PlaceBack(r)), "requeued after an interruption; starts over"),
    **{Transition(source, Q, Cause.RESUMED): ((lambda lc, r: lc.resume(r)),
                                              "requeued by the user; starts over (it has no checkpoint)")
       for source in (F, C, INT)},
}


def test_every_edge_of_the_table_has_a_case_here():
    assert set(EDGES) == set(LIFECYCLE)


def test_the_stores_table_is_the_lifecycle_without_its_causes():
    for state in RunState:
        assert TRANSITIONS[state] == {t.target for t in LIFECYCLE if t.source is state}
    assert all(not TRANSITIONS[s] for s in RunState if s.terminal and s not in (F, C))


@pytest.mark.parametrize("edge", sorted(LIFECYCLE, key=lambda t: (t.source.value, t.target.value, t.cause.value)),
                         ids=lambda t: f"{t.source.value}-{t.target.value}-{t.cause.value}")
def test_each_edge_moves_the_run_and_says_why(store, edge):
    lc = Lifecycle(store)
    run_id = bring(lc, store, edge.source)
    step, message = EDGES[edge]
    step(lc, run_id)
    record = store.get_run(run_id)
    assert record["state"] == edge.target.value
    if message is not None:
        assert record["events"][-1]["message"] == message
    if edge.target is F:
        assert record["error"]


@pytest.mark.parametrize("source", [RunState.COMPLETED, F, C, Q])
def test_what_the_table_lacks_leaves_the_run_as_it_was(store, source):
    """A fact that does not fit the run's state (a worker's late word, a start of a finished run)
    is not recorded: apply says None, the log says why, the record is unchanged."""
    said: list[str] = []
    lc = Lifecycle(store, log=said.append)
    run_id = bring(lc, store, source)
    before = store.get_run(run_id)
    facts = [Ended(run_id, RunState.COMPLETED), Lost(run_id, "gone"), CancelOverdue(run_id, "x"), Crashed(run_id, "x")]
    if source is not Q:
        facts.append(Started(run_id, Place("cpu.0", "cpu")))
    for fact in facts:
        assert lc.apply(fact) is None
    assert store.get_run(run_id) == before
    assert any("not recorded" in line for line in said) or source is Q


@pytest.mark.parametrize(("recovery", "state", "how"), [
    ("resume", "queued", "resumes from its checkpoint"),
    ("requeue", "queued", "starts over"),
    ("leave", "interrupted", None),
])
def test_an_interrupted_run_goes_on_as_recovery_says(store, recovery, state, how):
    lc = Lifecycle(store, recovery=recovery)
    run_id = bring(lc, store, R)
    store.workspace.run_dir(run_id)  # made on first use, as a worker makes it
    checkpoint = store.workspace.checkpoint_path(run_id)
    checkpoint.write_bytes(b"weights")
    lc.apply(Lost(run_id, "interrupted: its engine or worker stopped unexpectedly"))
    record = store.get_run(run_id)
    assert record["state"] == state
    if how is not None:
        assert record["events"][-1]["message"] == f"requeued after an interruption; {how}"
    assert checkpoint.exists() == (recovery != "requeue")


def test_nothing_is_requeued_while_the_engine_stops_nor_a_terminals_run(store):
    lc = Lifecycle(store)
    lc.stopping = True
    stopping = bring(lc, store, R)
    lc.apply(Lost(stopping, "interrupted: the engine stopped"))
    assert store.get_run(stopping)["state"] == "interrupted"
    lc.stopping = False
    terminal = new_run(store)
    store.transition(terminal, R, foreground=True)
    lc.apply(Lost(terminal, "interrupted"))
    assert store.get_run(terminal)["state"] == "interrupted"
    lc.recover()  # the next engine's start: the stopped engine's run goes on, the terminal's waits for its user
    assert store.get_run(stopping)["state"] == "queued" and store.get_run(terminal)["state"] == "interrupted"


def test_a_script_run_resumes_its_script(store):
    lc = Lifecycle(store)
    run_id = store.create_run(preset="s", config={"script": {"command": ["python", "x.py"]}}, config_hash="h")["id"]
    lc.apply(Started(run_id, Place("cpu.0", "cpu")))
    lc.apply(Lost(run_id, "interrupted", requeue=False))
    store.workspace.run_dir(run_id)
    (store.workspace.runs_dir / run_id / "reported.jsonl").write_text('{"epoch": 1}\n')
    record, how = lc.resume(run_id)
    assert how == "starts its script again with TRIALDECK_RESUME=1" and record["state"] == "queued"


def test_the_engine_hears_each_ending_it_sees_once(store):
    heard: list[tuple[str, RunState]] = []
    lc = Lifecycle(store, on_end=lambda run_id, state: heard.append((run_id, state)))
    crashed, overdue, refused, recorded = (bring(lc, store, R), bring(lc, store, R), new_run(store), bring(lc, store, R))
    lc.apply(Crashed(crashed, "worker process exited with code 1"))
    lc.apply(Crashed(crashed, "again"))  # the same death seen twice: already ended
    lc.apply(CancelOverdue(overdue, "worker stopped"))
    lc.apply(Refused(refused, "no GPU"))
    lc.apply(Ended(recorded, RunState.COMPLETED))  # a worker's own write: the engine hears it next
    lc.apply(EndRecorded(recorded, RunState.COMPLETED, where="cpu.0"))
    assert heard == [(crashed, F), (overdue, C), (refused, F), (recorded, RunState.COMPLETED)]


def test_a_run_that_stopped_itself_is_requeued_when_the_engine_hears_of_it(store):
    """A Dask task whose scheduler or engine seemed gone records its run interrupted itself."""
    lc = Lifecycle(store)
    run_id = bring(lc, store, R)
    lc.apply(Ended(run_id, INT))
    lc.apply(EndRecorded(run_id, INT, where="w1", why="its engine has not been heard from for 60 s"))
    assert store.get_run(run_id)["state"] == "queued"
