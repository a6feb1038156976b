"""The TUI under load: N runs streaming metrics while the dashboard follows them.

Set-up per N (10 and 50): a temp workspace with N runs in state `running`,
written through the real Store. A writer (this process) appends one step
record per run every 0.5 s and one epoch record per run every second to each
run's metrics.jsonl, and stores each run's epoch summary about once a second
(as the recorder's coalesced flush does: N catalogue writes a second).

The TUI runs in a child process, headless (`App.run(headless=True)`: the
whole app renders each update, only the bytes to the terminal are skipped),
with its real engine/hardware probe and a 2 Hz poll. Reported, for the child
process only (the writer is not counted):

- cpu: process CPU time / wall time over the measuring window (all threads:
  UI loop and the reader worker), in % of one core. Target <= 15% at 50 runs.
- key to repaint: a key event is handed to the app's driver and the clock
  stops at the first repaint of the screen it leads to (the app's display
  hook), for `3` (queue view) then `1` (runs view), repeated; and for `down`
  in the runs table. Target <= 100 ms. The first visit to a view is
  reported apart from the steady state: the view is built then (Textual
  parses its widgets' CSS and styles a couple of hundred nodes), once per
  session; the composer and the studies browser are the heaviest.
- sanity: how many rows show a sparkline at the end.

Marking and comparing (a second set-up): 50 finished runs of 200 epochs each.
Reported: key to repaint for `space` (mark the row and move down, 50 times),
for `C` (until the compare view shows the 50 runs' curves and summary, drawn
from the catalogue the app holds; the configs, for the differences, follow
from a worker), and for the compare view's toggles `e` (EMA), `l` (log y) and
`m` (next metric), which redraw the plot of 50 x 200 points. Target <= 100 ms.

Usage: python bench/bench_tui.py [--quick] [--compare-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CPU_TARGET = 15.0
LATENCY_TARGET_MS = 100.0


# ----------------------------------------------------------------------------- writer (this process)


def _prepare(root: Path, n: int) -> tuple[object, list[str]]:
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.presets import resolve
    from trialdeck.engine.types import RunState
    from trialdeck.engine.workspace import Workspace

    ws = Workspace(root).ensure()
    store = Store(ws)
    spec = resolve("seed/step-decay", ["train.epochs=400"])
    records = store.create_runs([{"preset": spec.preset, "config": spec.config(), "config_hash": spec.content_hash}
                                 for _ in range(n)])
    ids = [r["id"] for r in records]
    for i, run_id in enumerate(ids):
        store.transition(run_id, RunState.RUNNING, slot=f"cpu.{i}", device="cpu", worker=os.getpid())
        ws.run_dir(run_id).mkdir(parents=True, exist_ok=True)
    return ws, ids


class Writer(threading.Thread):
    """Appends steps (2/s) and epochs (1/s) per run, and stores each run's summary ~1/s."""

    def __init__(self, ws, ids: list[str]) -> None:
        super().__init__(daemon=True)
        from trialdeck.engine.catalogue.metrics import JsonlMetricsWriter
        from trialdeck.engine.catalogue.store import Store
        from trialdeck.engine.runtime.runners.recorder import METRICS_NAME

        self.ws, self.ids = ws, ids
        self.store = Store(ws)
        self.files = {r: JsonlMetricsWriter(ws.run_dir(r) / METRICS_NAME) for r in ids}
        self.history: dict[str, list[dict]] = {r: [] for r in ids}
        self.stop = threading.Event()
        self.writes = 0
        self.lag = 0.0

    def run(self) -> None:
        import math

        tick, step = 0.05, 0
        start = time.monotonic()
        n = len(self.ids)
        for r in self.ids:
            self.files[r].write({"t": time.time(), "kind": "start", "device": "cpu", "params": 1000})
        while not self.stop.is_set():
            due = start + step * tick
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                self.lag = max(self.lag, now - due)
            # Runs are spread over the second: run i acts on ticks i % 20 (steps) and i % 20 + 10.
            phase = step % 20
            for i, r in enumerate(self.ids):
                if i % 10 != phase % 10:
                    continue
                hist = self.history[r]
                e = len(hist) + 1
                loss = 2.3 * math.exp(-0.05 * e) + 0.1 * math.sin(e + i) ** 2
                self.files[r].write({"t": time.time(), "epoch": e, "step": step, "loss": loss})
                if phase == i % 20:
                    entry = {"epoch": e, "train_loss": loss, "val_loss": loss * 1.1, "val_acc": 1 - loss / 3,
                             "lr": 0.1, "seconds": 1.0}
                    self.files[r].write({"t": time.time(), "kind": "epoch", **entry})
                    hist.append(entry)
                    self.store.update_run(r, history=list(hist))
                    self.writes += 1
            step += 1
        for f in self.files.values():
            f.close()
        self.elapsed = time.monotonic() - start
        _ = n


# ----------------------------------------------------------------------------- the TUI (child process)


def child(home: str, seconds: float, n: int) -> dict:
    import asyncio

    from textual import events

    from trialdeck.engine.workspace import Workspace
    from trialdeck.tui.app import make_app

    ws = Workspace(Path(home))
    app = make_app(ws, start_engine=False, interval=0.5)
    paints: list[tuple[float, str]] = []
    display = app._display

    def spy(screen, renderable) -> None:  # the app's one door to the terminal
        display(screen, renderable)
        if renderable is not None:
            paints.append((time.perf_counter(), type(screen).__name__))

    app._display = spy  # type: ignore[method-assign]
    out: dict = {}

    async def press(key: str, target: str) -> float:
        t0 = time.perf_counter()
        event = events.Key(key, key if len(key) == 1 else None)
        event.set_sender(app)
        app._driver.send_message(event)
        while True:
            await asyncio.sleep(0.0005)
            hits = [t for t, s in paints if t > t0 and s == target]
            if hits:
                return (hits[0] - t0) * 1000
            if time.perf_counter() - t0 > 5:
                return float("inf")

    async def auto_pilot(pilot) -> None:
        while app.catalog is None or len(app.live) < n:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # settle: the first full read of every stream is behind us
        catalogs0, cpu0, wall0 = len(paints), time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, wall1 = time.process_time(), time.monotonic()
        out["cpu_percent"] = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
        out["repaints_per_s"] = (len(paints) - catalogs0) / (wall1 - wall0)
        first = {"queue": await press("3", "QueueScreen")}
        await asyncio.sleep(0.3)
        first["runs"] = await press("1", "RunsScreen")
        steady = []
        for _ in range(5):
            await asyncio.sleep(0.3)
            steady.append(await press("3", "QueueScreen"))
            await asyncio.sleep(0.3)
            steady.append(await press("1", "RunsScreen"))
        cursor = []
        for _ in range(5):
            await asyncio.sleep(0.2)
            cursor.append(await press("down", "RunsScreen"))
        for key, name, screen in (("2", "presets", "PresetsScreen"), ("4", "studies", "StudiesScreen")):
            await asyncio.sleep(0.3)
            first[name] = await press(key, screen)  # built on first visit: the heaviest views
            await asyncio.sleep(0.3)
            await press("1", "RunsScreen")
        out["first_visit_ms"] = first
        out["switch_ms"] = steady
        out["cursor_ms"] = cursor
        table = app.screen.query_one("#runs-table")
        sparks = [table.cells(k)[3] for k in table.keys]
        out["rows"] = len(sparks)
        out["rows_with_sparkline"] = sum(1 for s in sparks if s)
        app.exit()

    app.run(headless=True, size=(120, 40), auto_pilot=auto_pilot)
    return out


# ----------------------------------------------------------------------------- marking and comparing


COMPARE_RUNS, COMPARE_EPOCHS = 50, 200


def _prepare_finished(root: Path, n: int, epochs: int) -> object:
    """A workspace with `n` completed runs of `epochs` epochs each (distinct curves and learning rates)."""
    import math

    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.presets import resolve
    from trialdeck.engine.types import RunState
    from trialdeck.engine.workspace import Workspace

    ws = Workspace(root).ensure()
    store = Store(ws)
    specs = [resolve("seed/step-decay", [f"train.epochs={epochs}", f"optimizer.lr={0.01 * (1 + i % 10)}",
                                         f"train.seed={i}"]) for i in range(n)]
    records = store.create_runs([{"preset": s.preset, "config": s.config(), "config_hash": s.content_hash} for s in specs])
    for i, r in enumerate(records):
        k = 0.01 + 0.002 * i
        hist = [{"epoch": e, "train_loss": 2.3 * math.exp(-k * e) + 0.05, "val_loss": 2.3 * math.exp(-k * e) + 0.1,
                 "val_acc": 1 - 0.9 * math.exp(-k * e), "lr": 0.1 * 0.5 ** ((e + 1) // 10), "seconds": 1.0}
                for e in range(1, epochs + 1)]
        store.transition(r["id"], RunState.RUNNING, slot="cpu.0", device="cpu")
        store.transition(r["id"], RunState.COMPLETED, history=hist)
    return ws


def child_compare(home: str, n: int) -> dict:
    import asyncio

    from textual import events

    from trialdeck.engine.workspace import Workspace
    from trialdeck.tui.app import make_app

    app = make_app(Workspace(Path(home)), start_engine=False, interval=0.5)
    paints: list[tuple[float, str, bool]] = []
    display = app._display

    def spy(screen, renderable) -> None:
        display(screen, renderable)
        if renderable is not None:  # the compare view counts once it shows its runs
            paints.append((time.perf_counter(), type(screen).__name__, bool(getattr(screen, "drawn", True))))

    app._display = spy  # type: ignore[method-assign]
    out: dict = {}

    async def press(key: str, target: str) -> tuple[float, float]:
        """Milliseconds from the key to the first repaint of `target`, and to the first one with its data."""
        t0 = time.perf_counter()
        event = events.Key(key, key if len(key) == 1 else None)
        event.set_sender(app)
        app._driver.send_message(event)
        while True:
            await asyncio.sleep(0.0005)
            hits = [(t, ready) for t, s, ready in paints if t > t0 and s == target]
            loaded = [t for t, ready in hits if ready]
            if loaded:
                return (hits[0][0] - t0) * 1000, (loaded[0] - t0) * 1000
            if time.perf_counter() - t0 > 10:
                return float("inf"), float("inf")

    async def auto_pilot(pilot) -> None:
        while app.catalog is None or app.screen.query_one("#runs-table").row_count < n:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        marks = []
        for _ in range(n):
            marks.append((await press("space", "RunsScreen"))[0])
            await asyncio.sleep(0.02)
        out["marked"] = len(app.screen.query_one("#runs-table").marked)
        out["mark_ms"] = marks
        opens: list[tuple[float, float]] = []
        toggles: dict[str, list[float]] = {"e": [], "l": [], "m": []}
        for _ in range(3):  # opened three times: one reading on a busy box says little
            await asyncio.sleep(0.3)
            opens.append(await press("C", "CompareScreen"))
            screen = app.screen
            out["series"] = len(screen.query_one("#compare-plot").series)
            out["points"] = sum(len(s.xs) for s in screen.query_one("#compare-plot").series)
            for _ in range(3):
                for key in toggles:
                    await asyncio.sleep(0.2)
                    toggles[key].append((await press(key, "CompareScreen"))[1])
            await asyncio.sleep(0.2)
            await press("escape", "RunsScreen")
        out["open_first_paint_ms"] = [o[0] for o in opens]
        out["open_ms"] = [o[1] for o in opens]
        out["toggle_ms"] = toggles
        app.exit()

    app.run(headless=True, size=(120, 40), auto_pilot=auto_pilot)
    return out


def measure_compare(n: int = COMPARE_RUNS, epochs: int = COMPARE_EPOCHS) -> dict:
    with tempfile.TemporaryDirectory(prefix="trialdeck-bench-compare-") as tmp:
        ws = _prepare_finished(Path(tmp) / "home", n, epochs)
        env = {**os.environ, "TRIALDECK_HOME": str(ws.root)}
        proc = subprocess.run([sys.executable, __file__, "--child-compare", str(ws.root), str(n)],
                              capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"TUI child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(n=n, epochs=epochs)
        return result


def report_compare(r: dict) -> list[tuple[str, str, str, str]]:
    toggles = [v for vs in r["toggle_ms"].values() for v in vs]
    target = f"<= {LATENCY_TARGET_MS:.0f} ms"
    return [
        (f"{r['n']} runs x {r['epochs']} epochs: key to repaint, mark (median / max of {len(r['mark_ms'])})",
         f"{statistics.median(r['mark_ms']):.0f} / {max(r['mark_ms']):.0f} ms", f"{r['marked']} marked", target),
        (f"{r['n']} runs x {r['epochs']} epochs: key to repaint, open compare (view up / runs drawn, median of 3)",
         f"{statistics.median(r['open_first_paint_ms']):.0f} / {statistics.median(r['open_ms']):.0f} ms",
         f"{r['series']} curves, {r['points']} points", target),
        (f"{r['n']} runs x {r['epochs']} epochs: key to repaint, compare toggles e/l/m (median / max)",
         f"{statistics.median(toggles):.0f} / {max(toggles):.0f} ms",
         ", ".join(f"{k} {statistics.median(v):.0f} ms" for k, v in r["toggle_ms"].items()), target),
    ]


# ----------------------------------------------------------------------------- driver


def measure(n: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="trialdeck-bench-tui-") as tmp:
        ws, ids = _prepare(Path(tmp) / "home", n)
        writer = Writer(ws, ids)
        writer.start()
        time.sleep(1.0)  # streams exist and are growing before the TUI opens
        env = {**os.environ, "TRIALDECK_HOME": str(ws.root)}
        proc = subprocess.run([sys.executable, __file__, "--child", str(ws.root), str(seconds), str(n)],
                              capture_output=True, text=True, env=env, timeout=seconds + 120, cwd=ROOT)
        writer.stop.set()
        writer.join(5)
        if proc.returncode != 0:
            raise RuntimeError(f"TUI child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(n=n, seconds=seconds, store_writes_per_s=writer.writes / max(writer.elapsed, 1e-9),
                      writer_max_lag_s=writer.lag)
        return result


def run(quick: bool = False) -> dict:
    seconds = 4.0 if quick else 10.0
    return {**{f"runs_{n}": measure(n, seconds) for n in (10, 50)}, "compare": measure_compare()}


def report(result: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for key, r in result.items():
        if key == "compare":
            rows += report_compare(r)
            continue
        n = r["n"]
        steady = r["switch_ms"]
        rows.append((f"{n} streaming runs: TUI CPU (% of one core, 2 Hz poll)", f"{r['cpu_percent']:.1f}%",
                     f"{r['store_writes_per_s']:.0f} catalogue writes/s, {r['repaints_per_s']:.1f} repaints/s",
                     f"<= {CPU_TARGET:.0f}% at 50 runs"))
        rows.append((f"{n} runs: key to repaint, view switch (median / max of {len(steady)})",
                     f"{statistics.median(steady):.0f} / {max(steady):.0f} ms",
                     "first visit (view built): " + ", ".join(f"{k} {v:.0f} ms" for k, v in r["first_visit_ms"].items()),
                     f"<= {LATENCY_TARGET_MS:.0f} ms"))
        rows.append((f"{n} runs: key to repaint, cursor down (median / max)",
                     f"{statistics.median(r['cursor_ms']):.0f} / {max(r['cursor_ms']):.0f} ms",
                     f"{r['rows_with_sparkline']}/{r['rows']} rows with a live sparkline", f"<= {LATENCY_TARGET_MS:.0f} ms"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 s per size instead of 10")
    parser.add_argument("--child", nargs=3, metavar=("HOME", "SECONDS", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--child-compare", nargs=2, metavar=("HOME", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--compare-only", action="store_true", help="only the marking and comparing figures")
    args = parser.parse_args()
    if args.child_compare:
        print(json.dumps(child_compare(args.child_compare[0], int(args.child_compare[1]))))
        return
    if args.compare_only:
        result = {"compare": measure_compare()}
        for figure, value, reference, target in report(result):
            print(f"{figure:<72} {value:>14}   {reference}   (target {target})")
        print(json.dumps(result, indent=1))
        return
    if args.child:
        home, seconds, n = args.child
        print(json.dumps(child(home, float(seconds), int(n))))
        return
    result = run(args.quick)
    for figure, value, reference, target in report(result):
        print(f"{figure:<62} {value:>18}   {reference}   (target {target})")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
