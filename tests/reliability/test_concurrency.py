"""Several processes enqueueing, cancelling and reading the catalogue at once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

ENQUEUE = textwrap.dedent("""
    import sys
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.workspace import Workspace
    store = Store(Workspace.resolve(sys.argv[1]))
    for i in range(40):
        store.create_run(preset="seed/step-decay", config={"n": i}, config_hash="h")
""")
CANCEL = textwrap.dedent("""
    import sys, time
    from trialdeck.engine.errors import BadInput
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.workspace import Workspace
    store = Store(Workspace.resolve(sys.argv[1]))
    cancelled = 0
    deadline = time.monotonic() + 20
    while cancelled < 30 and time.monotonic() < deadline:
        for run in store.queued()[:3]:
            try:
                store.cancel_queued(run["id"])
                cancelled += 1
            except BadInput:
                pass  # another process got it first
    print(cancelled)
""")
READ = textwrap.dedent("""
    import json, sys, time
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.workspace import Workspace
    ws = Workspace.resolve(sys.argv[1])
    store = Store(ws)
    reads = 0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        runs = store.list_runs()
        ids = [r["id"] for r in runs]
        assert len(ids) == len(set(ids)), "duplicate ids seen"
        if ws.catalog_path.exists():
            json.loads(ws.catalog_path.read_bytes())  # never a half-written file
        reads += 1
    print(reads)
""")


def test_enqueue_cancel_and_read_at_once(tmp_path):
    home = str(tmp_path / "ws")
    procs = [subprocess.Popen([sys.executable, "-c", code, home], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for code in (ENQUEUE, ENQUEUE, ENQUEUE, CANCEL, CANCEL, READ)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, errs) in zip(procs, outs):
        assert p.returncode == 0, errs
    cancelled = int(outs[3][0]) + int(outs[4][0])
    reads = int(outs[5][0])
    assert reads > 10
    catalog = json.loads((tmp_path / "ws" / "catalog.json").read_text())
    runs = list(catalog["runs"].values())
    assert len(runs) == 120 and len({r["id"] for r in runs}) == 120
    states = [r["state"] for r in runs]
    assert states.count("cancelled") == cancelled and states.count("queued") == 120 - cancelled
    for r in runs:
        if r["state"] == "cancelled":
            assert [e["kind"] for e in r["events"]] == ["cancelled"], "each run cancelled exactly once"
