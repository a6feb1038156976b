"""Notifications ([notify] in engine.toml): what is sent, when, and that a dead or hanging webhook
changes nothing for the runs.

A real HTTP server (http.server in a thread, on 127.0.0.1) stands in for Slack; the engine
tests start real engines on their own workspaces and wait on the catalogue and on what the
server received, each with a deadline.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deck import Deck, cli, one_line, until
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput
from trialdeck.engine.runtime import notify
from trialdeck.engine.runtime.config import load_engine_config
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace

RUN_TIMEOUT = 120.0
"""Two 2-epoch digits runs finish in seconds; generous for a loaded 2-core box."""


class Hook:
    """An HTTP server on 127.0.0.1 that records each POST's JSON body; `fail_first` answers 500 first."""

    def __init__(self, fail_first: int = 0) -> None:
        self.posts: list[dict] = []
        self.fail_left = fail_first
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.fail_left > 0:
                    hook.fail_left -= 1
                    self.send_response(500)
                else:
                    hook.posts.append({"content_type": self.headers["Content-Type"], **json.loads(body)})
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/SECRET-TOKEN"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 30.0) -> list[dict]:
        until(lambda: len(self.posts) >= n, timeout, lambda: f"{n} POST(s) (got {len(self.posts)}: {self.posts})",
              interval=0.02)
        return self.posts

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def write_engine_toml(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "engine.toml").write_text(text)


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("table, words", [
    ('webhook = "ftp://x"', "webhook = 'ftp://x': allowed: an http:// or https:// URL"),
    ('command = "notify-send hi"', "command = 'notify-send hi': allowed: a list of strings (argv, no shell)"),
    ('webhook = "http://h"\non = ["done"]', "on = ['done']: allowed: a list of completed, failed, early_stopped"),
    ('webhook = "http://h"\nurl = "x"', "unknown key 'url'; allowed: webhook, command, on, trials, timeout, retries"),
    ('on = ["failed"]', "give webhook = URL, command = [argv], or both"),
    ('webhook = "http://h"\ntimeout = 0', "timeout = 0: allowed: seconds from 0.1 to 300"),
])
def test_a_bad_notify_table_is_one_line_naming_the_file_and_key(tmp_path, table, words):
    ws = Workspace(tmp_path / "ws").ensure()
    write_engine_toml(ws.root, f"[notify]\n{table}\n")
    with pytest.raises(BadInput, match="engine.toml: \\[notify\\]|engine.toml: notify") as info:
        load_engine_config(ws)
    assert words in info.value.message


def test_engine_start_with_a_bad_notify_table_exits_2_with_its_line(home):
    write_engine_toml(home, '[notify]\nwebhook = "hooks.slack.com/x"\n')
    proc = cli(home, "engine", "start")
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert str(home / "engine.toml") in line and "webhook = 'hooks.slack.com/x'" in line and "https://" in line


def test_notifications_are_off_without_a_notify_table(tmp_path):
    ws = Workspace(tmp_path / "ws").ensure()
    assert notify.parse_config(load_engine_config(ws).get("notify"), "engine.toml") is None


# ----------------------------------------------------------------------------- the notifier alone


def finished_run(store: Store, state: RunState = RunState.COMPLETED, study: str | None = None) -> str:
    from trialdeck.engine.presets import resolve

    spec = resolve("seed/step-decay", ["train.epochs=2"])
    run_id = store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash, study=study)["id"]
    store.transition(run_id, RunState.RUNNING)
    hist = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_acc": 0.5 + e / 10, "lr": 0.1, "seconds": 1.0}
            for e in (1, 2)]
    store.transition(run_id, state, history=hist, summary={"kept_epoch": 2, "kept": hist[-1], "best_epoch": 2},
                     error="boom at epoch 2" if state is RunState.FAILED else None)
    return run_id


def test_a_webhook_gets_slack_and_discord_fields_and_is_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(notify.sender, "BACKOFF", 0.01)
    store = Store(Workspace(tmp_path / "ws").ensure())
    hook = Hook(fail_first=2)
    lines: list[str] = []
    try:
        config = notify.parse_config({"webhook": hook.url, "on": ["completed", "failed"]}, "engine.toml")
        notifier = notify.Notifier(config, store, lines.append).start()
        done, failed = finished_run(store), finished_run(store, RunState.FAILED)
        cancelled = finished_run(store, RunState.CANCELLED)
        notifier.run_ended(done, "completed")
        notifier.run_ended(done, "completed")  # the same ending twice: sent once
        notifier.run_ended(cancelled, "cancelled")  # not in `on`
        notifier.run_ended(failed, "failed")
        posts = hook.wait(2)
        notifier.close()
        assert [(p["run"], p["state"]) for p in posts] == [(done, "completed"), (failed, "failed")]
        first = posts[0]
        assert first["content_type"] == "application/json"
        assert first["preset"] == "seed/step-decay" and first["summary"]["kept_epoch"] == 2
        assert first["text"] == first["content"]  # Slack shows `text`, Discord `content`
        assert first["text"].startswith(f"trialdeck: {done} completed") and "val_acc 0.7000" in first["text"]
        assert "error: boom at epoch 2" in posts[1]["text"]
        retries = [line for line in lines if "failed (attempt" in line]
        assert len(retries) == 2 and "HTTP 500" in retries[0] and "http://127.0.0.1:" in retries[0]
        assert not any("SECRET-TOKEN" in line for line in lines)  # the URL's path (Slack's secret) is never logged
    finally:
        hook.close()


def test_a_command_gets_its_placeholders_and_no_shell(tmp_path):
    store = Store(Workspace(tmp_path / "ws").ensure())
    out = tmp_path / "said.json"
    script = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"
    argv = [sys.executable, "-c", script, str(out), "{run}", "{state}", "{text}", "$HOME;"]
    config = notify.parse_config({"command": argv}, "engine.toml")
    notifier = notify.Notifier(config, store, lambda line: None).start()
    run_id = finished_run(store)
    notifier.run_ended(run_id, "completed")
    until(out.exists, 30, "the command to run", interval=0.02)
    notifier.close()
    args = json.loads(out.read_text())
    assert args[:2] == [run_id, "completed"] and args[2].startswith(f"trialdeck: {run_id} completed")
    assert args[3] == "$HOME;"  # no shell: passed as typed


def test_trial_runs_are_quiet_unless_asked(tmp_path, hook):
    store = Store(Workspace(tmp_path / "ws").ensure())
    trial = finished_run(store, study="s")
    plain = finished_run(store)
    quiet = notify.Notifier(notify.parse_config({"webhook": hook.url}, "engine.toml"), store, lambda line: None).start()
    quiet.run_ended(trial, "completed")
    quiet.run_ended(plain, "completed")
    assert [p["run"] for p in hook.wait(1)] == [plain]
    quiet.close()
    loud = notify.Notifier(notify.parse_config({"webhook": hook.url, "trials": True}, "engine.toml"), store,
                           lambda line: None).start()
    loud.run_ended(trial, "completed")
    assert hook.wait(2)[1]["run"] == trial and hook.posts[1]["study"] == "s"
    loud.close()


# ----------------------------------------------------------------------------- a real engine


def two_runs(deck: Deck) -> list[dict]:
    """Queue two 2-epoch runs, wait until both have ended (within RUN_TIMEOUT), return their records."""
    ids = [r["id"] for r in deck.json("run", "seed/step-decay", "--set", "train.epochs=2", "--repeat", "2")]

    def ended() -> list[dict] | None:
        records = [deck.store.get_run(i) for i in ids]
        return records if all(RunState(r["state"]).terminal for r in records) else None

    records = deck.wait(ended, RUN_TIMEOUT, f"{ids} to end")
    assert [r["state"] for r in records] == ["completed", "completed"], [r.get("error") for r in records]
    return records


@pytest.mark.slow
def test_the_engine_posts_once_per_run_with_its_id_and_state(home, hook):
    write_engine_toml(home, f'[notify]\nwebhook = "{hook.url}"\n')
    deck = Deck(home)
    records = two_runs(deck)
    posts = hook.wait(2)
    deck.stop()  # the notifier closes with the engine: any duplicate would have been sent by now
    assert sorted((p["run"], p["state"]) for p in posts) == sorted((r["id"], "completed") for r in records)
    by_run = {p["run"]: p for p in posts}
    for r in records:
        assert by_run[r["id"]]["summary"]["epochs"] == 2 and by_run[r["id"]]["preset"] == "seed/step-decay"
    assert "notifications on completed, early_stopped, failed, study_done go to http://127.0.0.1:" in deck.log_tail(200)


@pytest.mark.slow
def test_a_finished_study_is_one_notification(home, hook):
    write_engine_toml(home, f'[notify]\nwebhook = "{hook.url}"\n')
    deck = Deck(home)
    deck.json("tune", "seed/random-search", "--trials", "2", "--set", "train.epochs=1", "--wait", timeout=300)
    posts = hook.wait(1)
    deck.stop()
    assert len(posts) == 1, posts  # the trials themselves are quiet (trials = false)
    assert posts[0]["study"] == "seed-random-search" and posts[0]["state"] == "study_done"
    assert posts[0]["study_state"] == "completed" and posts[0]["summary"]["n_done"] == 2
    assert posts[0]["text"].startswith("trialdeck: study seed-random-search completed")


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/hook"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["closed port", "never answers"])
def test_a_dead_or_hanging_webhook_changes_nothing_for_the_runs(home, where):
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = closed_port() if where == "closed port" else f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    write_engine_toml(home, f'[notify]\nwebhook = "{url}"\ntimeout = 2\nretries = 2\n')
    deck = Deck(home)
    try:
        records = two_runs(deck)
        assert all(r["error"] is None for r in records)
        # The engine still answers and stops promptly while a notification is stuck in its thread.
        assert deck.json("engine", "status")["running"] is True
        log = deck.wait(lambda: "notify: webhook http://127.0.0.1" in deck.log_tail(400) and deck.log_tail(400),
                        30, "the failed notification in engine.log")
        reason = "cannot connect" if where == "closed port" else "no answer within the timeout"
        assert reason in log
        started = time.monotonic()
        deck.stop()
        assert time.monotonic() - started < 20
    finally:
        silent.close()
