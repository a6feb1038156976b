"""trialdeck.engine.runtime.control.actions's resume and rerun rules on a real TinyDB catalogue, no engine.

These are the rules `trialdeck runs resume|rerun` and the TUI share: which runs
may be queued again under their own id, what the record says afterwards, and
that a rerun is a new run that leaves the old record as it was.
"""

from __future__ import annotations

import pytest

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput, TrialdeckError
from trialdeck.engine.runtime.control import actions as control
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.testing import seed_workspace


@pytest.fixture
def seeded(tmp_path):
    ws = Workspace(tmp_path / "home").ensure()
    return ws, Store(ws), seed_workspace(ws)


def test_a_failed_run_with_a_checkpoint_is_queued_again_under_its_own_id(seeded) -> None:
    ws, store, ids = seeded
    run_id = ids["failed"]
    ws.run_dir(run_id)
    ws.checkpoint_path(run_id).write_bytes(b"")  # its existence is what is read here
    record, how = control.resume(store, run_id)
    assert how == "resumes from its checkpoint"
    assert record["id"] == run_id and record["state"] == "queued"
    assert record["error"] is None and record["finished_at"] is None and record["cancel_requested"] is False
    assert record["events"][-1]["kind"] == "requeued" and how in record["events"][-1]["message"]
    # Behind what was already queued at its priority (r6, at 0; r7 is at 5), not back in its old place.
    assert [r["id"] for r in store.queued()] == [ids["queued_high"], ids["queued"], run_id]


def test_a_cancelled_run_without_a_checkpoint_starts_over(seeded) -> None:
    _, store, ids = seeded
    record, how = control.resume(store, ids["cancelled"])
    assert record["state"] == "queued" and how == "starts over (it has no checkpoint)"


def test_an_interrupted_foreground_run_goes_on_in_the_engine(seeded) -> None:
    _, store, ids = seeded
    run_id = ids["running"]
    store.update_run(run_id, foreground=True)
    store.transition(run_id, RunState.INTERRUPTED)
    record, _ = control.resume(store, run_id)
    assert record["state"] == "queued" and record["foreground"] is False


@pytest.mark.parametrize(("role", "says"), [
    ("completed", "already completed; `trialdeck runs rerun"),
    ("early_stopped", "already early_stopped"),
    ("queued", "is queued; only failed, cancelled or interrupted runs can be resumed"),
    ("running", "is running"),
    ("trial0", "already completed"),
])
def test_runs_that_cannot_be_resumed_are_refused_with_the_reason(seeded, role, says) -> None:
    _, store, ids = seeded
    before = store.get_run(ids[role])
    with pytest.raises(BadInput) as info:
        control.resume(store, ids[role])
    assert says in str(info.value) and "\n" not in str(info.value)
    assert store.get_run(ids[role]) == before


def test_an_interrupted_trial_can_be_resumed_and_a_failed_one_cannot(seeded) -> None:
    _, store, ids = seeded
    run_id = ids["running"]
    store.update_run(run_id, study="s", trial=4)
    store.transition(run_id, RunState.INTERRUPTED)
    assert control.resume(store, run_id)[0]["state"] == "queued"
    store.update_run(ids["failed"], study="s", trial=5)
    with pytest.raises(BadInput, match="trial 5 of study s"):
        control.resume(store, ids["failed"])


def test_rerun_makes_new_runs_with_the_same_config_pin_and_priority(seeded) -> None:
    _, store, ids = seeded
    old = store.get_run(ids["queued_high"])
    store.update_run(ids["completed"], pinned="cuda:1")
    done = store.get_run(ids["completed"])
    new_high, new_done = control.rerun(store, [ids["queued_high"], ids["completed"]])
    assert new_high["id"] not in ids.values() and new_high["state"] == "queued"
    assert new_high["config"] == old["config"] and new_high["priority"] == old["priority"] == 5
    assert new_done["config"] == done["config"] and new_done["pinned"] == "cuda:1"
    assert store.get_run(ids["completed"]) == done  # the old record stays as it was
    [low] = control.rerun(store, [ids["completed"]], priority=-3)
    assert low["priority"] == -3


def test_rerun_queues_nothing_when_one_id_is_unknown(seeded) -> None:
    _, store, ids = seeded
    before = len(store.list_runs())
    with pytest.raises(BadInput, match="no run 'r99'"):
        control.rerun(store, [ids["completed"], "r99"])
    assert len(store.list_runs()) == before


def test_rerun_keeps_the_folder_the_run_was_queued_from_and_resolves_its_sets_there(seeded, tmp_path,
                                                                                      monkeypatch) -> None:
    _, store, ids = seeded
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    store.update_run(ids["completed"], workdir=str(project))
    monkeypatch.chdir(elsewhere)  # `runs rerun` typed in another folder
    [plain] = control.rerun(store, [ids["completed"]])
    assert plain["workdir"] == str(project)
    (project / "mine.npz").write_bytes(b"")  # what the run's own folder holds
    with pytest.raises(TrialdeckError) as refused:  # an empty file is no .npz: read from the project, not here
        control.rerun(store, [ids["completed"]], sets=["data.dataset='arrays'", "data.path='mine.npz'"])
    assert f"{project}/mine.npz" in refused.value.message


def test_following_an_interrupted_run_ends_only_while_the_engine_is_held(seeded) -> None:
    from trialdeck.engine.runtime.control.client import follow_ended

    ws, store, ids = seeded
    interrupted = store.transition(ids["running"], RunState.INTERRUPTED)
    assert not follow_ended(ws, interrupted)  # the engine takes it up again: `runs logs -f` goes on
    ws.held_path.write_text("")  # `engine stop`
    assert follow_ended(ws, interrupted)
    assert follow_ended(ws, store.get_run(ids["completed"]))
