"""A script run's view: the Log tab follows new output, and the Capture tab shows what the run's
preset would capture from the run's own log, its file as it is now (edit a pattern, look again)."""

from __future__ import annotations

from textual.widgets import Static, TabbedContent

from tests.tui.conftest import SIZE, loaded, new_app, screen_name
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets import preset_roots
from trialdeck.engine.presets.loader import resolve
from trialdeck.engine.runs.folder import LOG_NAME
from trialdeck.engine.types import RunState
from trialdeck.tui import messages
from trialdeck.tui.testing import wait_for

PRESET = '[script]\ncommand = ["/bin/true"]\nworkdir = "{workdir}"\n'
LOG = ("12:00:00 worker 4242 starting r1 on cpu: /bin/true (in /tmp)\n"
       "| epoch   1 |   200/ 2983 batches | lr 20.00 | ms/batch 45.67 | loss  7.63 | ppl  2065.41\n"
       "| end of epoch   1 | time: 140.31s | valid loss  6.91 | valid ppl   999.53\n"
       "| epoch   2 |   200/ 2983 batches | lr 20.00 | ms/batch 45.67 | loss  6.02 | ppl  411.58\n")


def text(widget: Static) -> str:
    return str(widget.render())


async def test_a_script_runs_log_follows_and_its_capture_shows_what_the_preset_reads(ws, utc, tmp_path):
    preset = ws.presets_dir / "mine" / "wlm.toml"
    preset.parent.mkdir(parents=True)
    preset.write_text(PRESET.format(workdir=tmp_path))
    spec = resolve("mine/wlm", [], preset_roots(ws.presets_dir))
    store = Store(ws)
    run = store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash)
    store.transition(run["id"], RunState.RUNNING, slot="cpu.0", device="cpu", worker=4242)
    log = ws.run_dir(run["id"]) / LOG_NAME
    log.write_text(LOG + "".join(f"| epoch   2 | {i:5d}/ 2983 batches | lr 20.00 |\n" for i in range(300)))
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        app.post_message(messages.OpenRun(run["id"]))
        await wait_for(pilot, lambda: screen_name(app) == "RunDetailScreen" and app.screen.record is not None,
                       what="the run's view")
        detail = app.screen
        tabs = detail.query_one(TabbedContent)
        tabs.active = "tab-log"
        scroll = detail.query_one("#run-log-scroll")
        await wait_for(pilot, lambda: scroll.max_scroll_y > 0 and scroll.scroll_y == scroll.max_scroll_y,
                       what="the log opened at its end")
        with open(log, "a") as f:
            f.write("| end of epoch   2 | time: 139.02s | valid loss  5.80 | valid ppl   330.30\n")
        await wait_for(pilot, lambda: "valid loss  5.80" in text(detail.query_one("#run-log", Static)), timeout=10,
                       what="the new line, while the run runs")
        await wait_for(pilot, lambda: scroll.scroll_y == scroll.max_scroll_y, what="the log followed to its end")

        tabs.active = "tab-capture"
        capture = detail.query_one("#run-capture", Static)
        await wait_for(pilot, lambda: "names: lr, ms_batch, loss, ppl, time, valid_loss, valid_ppl" in text(capture),
                       timeout=10, what="the names the capture reads")
        assert "mine/wlm's [script.capture] as its file is now" in text(capture)
        assert "5.8000" in text(capture)  # epoch 2's valid loss, from the line just written
        preset.write_text(PRESET.format(workdir=tmp_path) + '[script.capture]\nrename = { valid_loss = "val_loss" }\n')
        tabs.active = "tab-log"
        tabs.active = "tab-capture"
        await wait_for(pilot, lambda: "valid_ppl" in text(capture) and "val_loss" in text(capture)
                       and "valid_loss" not in text(capture), timeout=10, what="the edited rename, at once")


async def test_a_running_script_runs_time_counts_on_with_nothing_new_in_its_streams(ws, utc, tmp_path):
    """A script run may print nothing the catalogue or a metric stream shows for minutes: its row's
    time and its view's header still count on (they follow the clock, not the data)."""
    import time

    from trialdeck.tui.app import make_app
    from trialdeck.tui.probes import FixedProbe

    preset = ws.presets_dir / "quiet.toml"
    preset.write_text(PRESET.format(workdir=tmp_path))
    spec = resolve("quiet", [], preset_roots(ws.presets_dir))
    store = Store(ws)
    run = store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash)
    store.transition(run["id"], RunState.RUNNING, slot="cpu.0", device="cpu", worker=4242)
    started = store.get_run(run["id"])["started_at"]
    now = [started + 5.0]
    app = make_app(ws, start_engine=False, clock=lambda: now[0], probe=FixedProbe(), interval=0.05, cursor_blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        rows = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: "5s" in list(rows.cells(run["id"])), what="5 s elapsed")
        now[0] = started + 125.0
        await wait_for(pilot, lambda: "2m05s" in list(rows.cells(run["id"])), timeout=5, what="2m05s, no new data")
        app.post_message(messages.OpenRun(run["id"]))
        await wait_for(pilot, lambda: screen_name(app) == "RunDetailScreen" and app.screen.record is not None,
                       what="the run's view")
        header = app.screen.query_one("#run-header", Static)
        assert "2m05s" in text(header)
        now[0] = started + 3725.0
        await wait_for(pilot, lambda: "1h02m" in text(header), timeout=5, what="the header's time, counting on")
        assert time.time() - started < 120  # the clock moved, not the test's minutes
