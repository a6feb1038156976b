"""The catalogue's one-document-per-line layout and incremental reads, on real files.

A reader re-parses only the lines that changed since it last read the file
(engine/store.py, module docstring). What must hold: every reader sees exactly
what a whole parse of the file gives (`json.loads`), whoever wrote it (another
Store, another process, TinyDB itself, a person with an editor); a file that
does not parse is still refused; and no object is shared between a Store's
cache and what it hands out. The cross-process tests use a real subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinydb import TinyDB

from trialdeck.engine.catalogue import lines as lines_module
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import CatalogCorrupt
from trialdeck.engine.types import TRANSITIONS, RunState
from trialdeck.engine.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
HISTORY = [{"epoch": i, "train_loss": 2.0 / (i + 1), "val_loss": 1.5 / (i + 1), "val_acc": 0.8, "lr": 0.1} for i in range(5)]


@pytest.fixture(autouse=True, params=[1, 300, None], ids=["line-chunks", "small-chunks", "default-chunks"])
def chunk_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with chunks of one line, of a few lines, and of the real size (which holds these
    small catalogues whole), so that chunk boundaries fall everywhere."""
    if request.param is not None:
        monkeypatch.setattr(lines_module, "_CHUNK_BYTES", request.param)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws").ensure()


def _items(n: int, tag: str = "") -> list[dict[str, Any]]:
    return [{"preset": "seed/step-decay", "config": {"i": i, "tag": tag, "hidden": [64, 64]}, "config_hash": f"h{i}"}
            for i in range(n)]


def _on_disk(ws: Workspace) -> dict[str, Any]:
    """What a whole parse of the file gives, by the standard library."""
    return json.loads(ws.catalog_path.read_bytes())


def _same_tables(a: dict[str, Any], b: dict[str, Any]) -> bool:
    # A Store shows every table of TABLES, empty or not; a file may leave some out.
    return all(a.get(name, {}) == b.get(name, {}) for name in set(a) | set(b))


def _cache(store: Store) -> dict[str, Any]:
    """The Store's own view of the file (its cache, refreshed the way every call refreshes it)."""
    with store._mutex:
        return store._load()


def _check_cache(store: Store) -> None:
    """Every cached chunk of lines parses to exactly the documents it is paired with, which are the cache's."""
    snap = store._snapshot
    if snap is None:
        return
    for name, chunks in snap.fragments.items():
        table = snap.state[name]
        merged: dict[str, Any] = {}
        for chunk in chunks:
            assert orjson.loads(b"{" + chunk.data + b"}") == dict(zip(chunk.keys, chunk.docs))
            if chunk.ends() is not None:
                for i, (key, doc) in enumerate(zip(chunk.keys, chunk.docs)):
                    assert orjson.loads(b"{" + chunk.line(i) + b"}") == {key: doc}
            merged.update(zip(chunk.keys, chunk.docs))
        assert list(merged) == list(table), name
        assert all(merged[key] is doc for key, doc in table.items())


def _agrees(store: Store, ws: Workspace) -> None:
    assert _same_tables(_cache(store), _on_disk(ws))
    _check_cache(store)


def _delete_runs(store: Store, numbers: list[int]) -> None:
    """Remove run documents and their events (the Store has no public delete; a script could do this)."""
    with store._transaction() as db:
        db.table("runs").remove(doc_ids=numbers)
        ids = {f"r{n}" for n in numbers}
        db.table("events").remove(lambda e: e.get("run") in ids)


class _WholeParses:
    """Counts whole-file parses (the fallback), to show a read took the incremental path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = Store._parse_whole

        def counting(store: Store, data: bytes) -> dict[str, Any]:
            self.count += 1
            return original(store, data)

        monkeypatch.setattr(Store, "_parse_whole", counting)


# ------------------------------------------------------------------- layout


def test_layout_is_one_document_per_line_and_plain_json(ws: Workspace) -> None:
    store = Store(ws)
    store.create_runs(_items(3))
    store.transition("r2", "running", add_events=[{"kind": "started", "message": "started on cpu0"}])
    store.record_epoch_and_events("r2", HISTORY[0], [{"kind": "lr_changed", "epoch": 0, "message": "lr 0.1 -> 0.05"}])
    store.upsert_study("s", {"metric": "val_loss"})
    store.upsert_trials("s", [{"number": 0, "state": "complete"}, {"number": 1, "state": "running"}])
    raw = ws.catalog_path.read_bytes()

    lines = raw.split(b"\n")
    assert lines[0].startswith(b'{"meta":{"1":{"generation":') and lines[0].endswith(b'"runs":{')
    assert [line[:4] for line in lines[1:4]] == [b'"1":', b'"2":', b'"3":']
    assert lines[1].endswith(b"},") and lines[3].endswith(b"}") and not lines[3].endswith(b",")
    assert lines[4].startswith(b'},"studies":{"1":{') and lines[4].endswith(b'"trials":{')
    assert raw.endswith(b"\n}}")
    assert raw.count(b"\n") == 3 + 2 + 2 + 3  # runs, trials and events documents, plus each table's closing line

    # Plain JSON to every reader, and the incremental writer's bytes are what a full encode gives.
    assert json.loads(raw) == orjson.loads(raw)
    assert lines_module.serialize(orjson.loads(raw), {}, {}) == raw
    with TinyDB(ws.catalog_path, access_mode="r") as db:
        assert db.table("runs").get(doc_id=2)["state"] == "running"
        assert [t["number"] for t in db.table("trials").all()] == [0, 1]
        assert len(db.table("events")) == 2 and db.table("meta").get(doc_id=1)["next_run"] == 4
    assert Store(ws).get_run("r2")["history"] == [HISTORY[0]]


def test_empty_tables_stay_compact(ws: Workspace) -> None:
    store = Store(ws)
    store.upsert_study("s", {"metric": "val_loss"})
    raw = ws.catalog_path.read_bytes()
    assert b"\n" not in raw and b'"runs":{},' in raw and raw.endswith(b'"events":{}}')
    store.create_runs(_items(2))
    _delete_runs(store, [1, 2])
    assert b'"runs":{},' in ws.catalog_path.read_bytes()
    assert Store(ws).list_runs() == []


def test_a_write_encodes_only_the_documents_it_changed(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    writer, reader = Store(ws), Store(ws)
    writer.create_runs(_items(40))
    writer.upsert_trials("s", [{"number": n, "state": "complete"} for n in range(10)])
    encoded: list[str] = []
    original = lines_module._encode_doc
    monkeypatch.setattr(lines_module, "_encode_doc", lambda key, doc: encoded.append(key) or original(key, doc))

    def encodes(write) -> list[str]:
        encoded.clear()
        write()
        _agrees(writer, ws)
        _agrees(reader, ws)
        return sorted(encoded)

    assert encodes(lambda: writer.transition("r7", "running", add_events=[{"kind": "started", "message": "m"}])) == ["1", "7"]
    assert encodes(lambda: writer.create_runs(_items(2))) == ["41", "42"]
    assert encodes(lambda: _delete_runs(writer, [1, 20, 42])) == []
    assert encodes(lambda: writer.upsert_trials("s", [{"number": 4, "state": "pruned"}])) == ["5"]
    # A Store that has only read the file writes from what it read.
    assert encodes(lambda: reader.update_run("r30", note="x")) == ["30"]
    assert encodes(lambda: writer.update_run("r2", note="y")) == ["2"]


def test_the_file_always_lists_each_table_in_its_own_order() -> None:
    """Whatever the cache holds, `_serialize` writes the state: its order, its current objects."""
    docs = {str(i): {"i": i} for i in range(1, 30)}
    state = {"meta": {"1": {"generation": 1}}, "runs": dict(docs)}
    fragments: dict[str, Any] = {}
    lines_module.serialize(state, fragments, {})
    reordered = {"meta": state["meta"], "runs": dict(reversed(list(docs.items())))}
    assert lines_module.serialize(reordered, fragments, {}) == lines_module.serialize(reordered, {}, {})
    replaced = {"meta": state["meta"], "runs": {**reordered["runs"], "5": {"i": "new"}}}  # not mutated: replaced
    raw = lines_module.serialize(replaced, fragments, {})
    assert raw == lines_module.serialize(replaced, {}, {}) and orjson.loads(raw)["runs"]["5"] == {"i": "new"}


# ------------------------------------------------------- two Stores, one file


def test_a_second_store_reads_only_what_changed(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _WholeParses(monkeypatch)
    writer, reader = Store(ws), Store(ws)
    writer.create_runs(_items(30))
    writer.upsert_study("s", {"metric": "val_loss"})
    writer.upsert_trials("s", [{"number": n, "state": "complete"} for n in range(5)])
    _agrees(reader, ws)

    def step(write, changed: set[str]) -> None:
        before = dict(_cache(reader)["runs"])
        write()
        after = _cache(reader)["runs"]
        kept = {k for k in after if k in before and after[k] is before[k]}
        assert kept == set(after) - changed, "unchanged documents keep their parsed objects"
        _agrees(reader, ws)

    step(lambda: writer.transition("r3", "running", worker=7), {"3"})  # a changed document
    step(lambda: writer.record_epoch_and_events("r3", HISTORY[1], []), {"3"})
    step(lambda: writer.create_runs(_items(4, "more")), {"31", "32", "33", "34"})  # inserts, at the end
    step(lambda: _delete_runs(writer, [1, 17, 34]), set())  # deletes: first, middle, last
    step(lambda: writer.update_run("r2", summary={"best": 0.5}), {"2"})  # now the first line
    step(lambda: writer.upsert_trials("s", [{"number": 3, "state": "pruned"}]), set())
    step(lambda: writer.clear_queue(), {k for k, d in _on_disk(ws)["runs"].items() if d["state"] == "queued"})
    assert whole.count == 0

    # The reader writes too, from its incremental cache, and the first Store follows.
    reader.transition("r3", "completed")
    assert reader.path.read_bytes() == lines_module.serialize(orjson.loads(reader.path.read_bytes()), {}, {})
    _agrees(writer, ws)
    assert writer.get_run("r3")["state"] == "completed" and whole.count == 0


def test_a_catalogue_of_many_chunks(ws: Workspace) -> None:
    """Some 900 KB of runs and events: many chunks even at the real chunk size."""
    writer, reader = Store(ws), Store(ws)
    writer.create_runs([{**item, "extra": {"history": HISTORY * 4}} for item in _items(600)])
    for n in range(1, 601, 3):
        writer.record_epoch_and_events(f"r{n}", None, [{"kind": "checkpoint", "message": f"checkpoint {n}"}])
    _agrees(reader, ws)
    assert len(reader._snapshot.fragments["runs"]) > 5 or lines_module._CHUNK_BYTES < 1000
    for write in (
        lambda: writer.update_run("r300", note="middle"),
        lambda: writer.transition("r1", "running", add_events=[{"kind": "started", "message": "m"}]),
        lambda: _delete_runs(writer, [2, 3, 4, 5, 6, 7, 8, 9, 10, 598, 599, 600]),
        lambda: writer.create_runs(_items(3, "late")),
        lambda: reader.update_run("r11", note="the reader writes"),
        lambda: [writer.update_run(f"r{n}", note="many") for n in range(100, 400, 7)],
    ):
        before = {k: d for k, d in _cache(reader)["runs"].items()}
        write()
        after = _cache(reader)["runs"]
        changed = {k for k in after if orjson.dumps(after[k]) != orjson.dumps(before.get(k))}
        assert {k for k in after if k in before and after[k] is before[k]} == set(after) - changed
        _agrees(reader, ws)
        _agrees(writer, ws)


def test_records_handed_out_never_alias_the_cache(ws: Workspace) -> None:
    writer, reader = Store(ws), Store(ws)
    writer.create_runs(_items(5))
    writer.record_epoch_and_events("r1", HISTORY[0], [])
    for records in (reader.list_runs(), reader.list_runs(), [reader.get_run("r1")], reader.queued(),
                    reader.list_runs(omit=("config",))):
        for r in records:  # vandalise every copy, nested lists and dicts included
            r.get("history", []).append("junk")
            r.get("config", {}).clear()
            r["state"] = "vandalised"
        writer.update_run("r2", note="x")  # the reader's next read reuses the documents it kept
        _agrees(reader, ws)
    assert reader.get_run("r1")["history"] == [HISTORY[0]]


def test_only_a_first_read_hands_out_the_parsed_objects(ws: Workspace) -> None:
    writer = Store(ws)
    writer.create_runs(_items(5))
    one_shot = Store(ws)
    assert len(one_shot.list_runs()) == 5 and one_shot._snapshot is None  # `runs list`: no copy, cache dropped

    # A long-lived reader (the engine polls running runs) keeps its cache from then on,
    # so each later read parses only what changed.
    reader = Store(ws)
    reader.list_runs("running")
    for n in range(1, 4):
        writer.transition(f"r{n}", "running")
        kept = dict(reader._snapshot.state["runs"]) if reader._snapshot else {}
        assert [r["id"] for r in reader.list_runs("running")] == [f"r{i}" for i in range(1, n + 1)]
        if n > 1:
            runs = reader._snapshot.state["runs"]
            assert sum(runs[k] is kept[k] for k in kept) == 4
        _agrees(reader, ws)


def test_a_failed_transaction_forgets_the_cache(ws: Workspace) -> None:
    writer, reader = Store(ws), Store(ws)
    writer.create_runs(_items(5))
    _agrees(reader, ws)
    before = ws.catalog_path.read_bytes()
    with pytest.raises(RuntimeError), reader._transaction() as db:
        db.table("runs").update({"state": "mangled"}, doc_ids=[2])
        raise RuntimeError("after TinyDB changed the cached document in place")
    assert ws.catalog_path.read_bytes() == before
    assert reader.get_run("r2")["state"] == "queued"
    writer.update_run("r2", note="x")
    _agrees(reader, ws)


# ----------------------------------------------------- files written by others


def test_files_in_other_layouts_load_and_the_next_write_restores_ours(ws: Workspace,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    writer, reader = Store(ws), Store(ws)
    writer.create_runs(_items(6))
    _agrees(reader, ws)
    whole = _WholeParses(monkeypatch)

    # TinyDB alone, as a user's script would: it rewrites the file in its own one-line layout.
    with TinyDB(ws.catalog_path) as db:
        db.table("runs").update({"note": "from tinydb"}, doc_ids=[4])
        db.table("runs").insert({"id": "r7", "preset": "p", "state": "completed", "seq": 7})
    assert b"\n" not in ws.catalog_path.read_bytes()
    _agrees(reader, ws)
    assert reader.get_run("r4")["note"] == "from tinydb" and reader.get_run("r7")["state"] == "completed"

    # Pretty-printed by hand, and plain json.dump of the old compact layout.
    data = _on_disk(ws)
    data["runs"]["5"]["note"] = "pretty"
    ws.catalog_path.write_text(json.dumps(data, indent=2))
    _agrees(reader, ws)
    data["runs"]["6"]["note"] = "compact"
    ws.catalog_path.write_bytes(orjson.dumps(data))
    _agrees(reader, ws)
    assert whole.count == 0  # all three parsed as a whole by the line reader itself: no line inside a table

    # The next write uses one line per document again, and readers go back to reading only changes.
    assert writer.create_run(preset="p", config={}, config_hash="h")["id"] == "r8"
    assert ws.catalog_path.read_bytes().count(b"\n") > 8
    _agrees(reader, ws)
    kept = dict(_cache(reader)["runs"])
    writer.update_run("r8", note="x")
    assert sum(_cache(reader)["runs"][k] is kept[k] for k in kept) == len(kept) - 1
    _agrees(reader, ws)


def _edits() -> list[Any]:
    """(id, edit of the file's bytes) pairs; each edit is applied to a file in our layout."""

    def line_of(raw: bytes, key: bytes) -> tuple[int, int]:
        start = raw.index(b"\n" + key + b":") + 1
        return start, raw.index(b"\n", start)

    def change_value(raw: bytes) -> bytes:
        start, end = line_of(raw, b'"3"')
        return raw[:start] + raw[start:end].replace(b'"queued"', b'"failed"') + raw[end:]

    def drop_middle_line(raw: bytes) -> bytes:
        start, end = line_of(raw, b'"3"')
        return raw[:start] + raw[end + 1:]

    def swap_lines(raw: bytes) -> bytes:
        a0, a1 = line_of(raw, b'"2"')
        b0, b1 = line_of(raw, b'"3"')
        return raw[:a0] + raw[b0:b1] + b"\n" + raw[a0:a1] + raw[b1:]

    def spaces(raw: bytes) -> bytes:
        start, end = line_of(raw, b'"3"')
        return raw[:start] + b'  "3" : ' + raw[start + 4:end] + raw[end:]

    def string_key(raw: bytes) -> bytes:
        start, _ = line_of(raw, b'"3"')
        return raw[:start] + b'"x\\"3":{"id":"odd"},\n' + raw[start:]

    def two_per_line(raw: bytes) -> bytes:
        _, end = line_of(raw, b'"2"')
        return raw[:end] + b'"9":{"id":"r9"},' + raw[end + 1:]

    def duplicate_key(raw: bytes) -> bytes:
        start, end = line_of(raw, b'"4"')
        return raw[:end + 1] + raw[start:end].replace(b'"queued"', b'"dup"') + b",\n" + raw[end + 1:]

    def nested_table_name(raw: bytes) -> bytes:
        # A study whose document holds a key "runs" whose members sit on lines of their own.
        return raw.replace(b'"studies":{}', b'"studies":{"1":{"name":"s","runs":{\n"1":{"id":"r1"}\n}}}')

    def blank_line(raw: bytes) -> bytes:
        start, _ = line_of(raw, b'"3"')
        return raw[:start] + b"\n" + raw[start:]

    def crlf(raw: bytes) -> bytes:
        return raw.replace(b"\n", b"\r\n")

    def trailing_newline(raw: bytes) -> bytes:
        return raw + b"\n"

    def closing_on_last_line(raw: bytes) -> bytes:
        _, end = line_of(raw, b'"5"')
        return raw[:end] + raw[end + 1:]

    # Files that do not parse: a whole parse refuses them, so must the line reader.
    def missing_comma(raw: bytes) -> bytes:
        _, end = line_of(raw, b'"2"')
        return raw[:end - 1] + raw[end:]

    def trailing_comma(raw: bytes) -> bytes:
        _, end = line_of(raw, b'"5"')
        return raw[:end] + b"," + raw[end:]

    def trailing_comma_and_blank_line(raw: bytes) -> bytes:
        _, end = line_of(raw, b'"5"')
        return raw[:end] + b",\n" + raw[end:]

    def raw_newline_in_string(raw: bytes) -> bytes:
        return raw.replace(b'"seed/step-decay"', b'"seed/\nstep-decay"', 1)

    def raw_newline_in_meta(raw: bytes) -> bytes:
        return raw.replace(b'"generation":', b'"gener\nation":', 1)

    def study_not_a_document(raw: bytes) -> bytes:
        return raw.replace(b'"studies":{}', b'"studies":{"1":5}')

    def not_a_document(raw: bytes) -> bytes:
        start, end = line_of(raw, b'"3"')
        return raw[:start] + b'"3":[1,2]' + raw[end - 1:]

    def truncated_line(raw: bytes) -> bytes:
        start, end = line_of(raw, b'"3"')
        return raw[:start] + raw[start:end - 20] + raw[end - 1:]

    def nul_padded(raw: bytes) -> bytes:
        return raw[: len(raw) // 2] + b"\0" * (len(raw) - len(raw) // 2)

    def unclosed(raw: bytes) -> bytes:
        return raw[:-2]

    valid = [change_value, drop_middle_line, swap_lines, spaces, string_key, two_per_line, duplicate_key,
             nested_table_name, blank_line, crlf, trailing_newline, closing_on_last_line]
    invalid = [missing_comma, trailing_comma, trailing_comma_and_blank_line, raw_newline_in_string, raw_newline_in_meta,
               study_not_a_document, not_a_document, truncated_line, nul_padded, unclosed]
    return [pytest.param(e, id=e.__name__) for e in valid + invalid]


@pytest.mark.parametrize("edit", _edits())
def test_a_hand_edited_file_reads_as_a_whole_parse_would(ws: Workspace, edit) -> None:
    writer, reader = Store(ws), Store(ws)
    writer.create_runs(_items(5))
    writer.transition("r1", "running", add_events=[{"kind": "started", "message": "m"}])
    _agrees(reader, ws)  # warm: the edited file is read against a cache
    bad = edit(ws.catalog_path.read_bytes())
    ws.catalog_path.write_bytes(bad)
    try:
        expected = json.loads(bad)
        assert isinstance(expected, dict) and all(isinstance(d, dict) for t in expected.values() for d in t.values())
    except (ValueError, AssertionError):
        expected = None
    for store in (reader, Store(ws)):  # warm and cold
        if expected is None:
            with pytest.raises(CatalogCorrupt, match="is corrupt .* left untouched") as caught:
                store.list_runs()
            assert "catalog.json.bak holds the last good state" in str(caught.value)
            assert ws.catalog_path.read_bytes() == bad
        else:
            assert _same_tables(_cache(store), expected)
            _check_cache(store)
    # Writing from there works (TinyDB itself cannot update a table with a non-number key). Lines the
    # write did not touch may keep a hand edit's spacing: still one valid member each.
    if expected is not None and all(key.isdigit() for table in expected.values() for key in table):
        reader.update_run("r1", note="after the edit")
        _agrees(writer, ws)
        _agrees(reader, ws)
        assert Store(ws).get_run("r1")["note"] == "after the edit"


# ------------------------------------------------------------ real processes

_READER = textwrap.dedent(
    """
    import json, sys
    from trialdeck.engine.catalogue import lines as lines_module
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.errors import CatalogCorrupt
    from trialdeck.engine.workspace import Workspace

    whole = 0
    original = Store._parse_whole
    def counting(store, data):
        global whole
        whole += 1
        return original(store, data)
    Store._parse_whole = counting

    lines_module._CHUNK_BYTES = int(sys.argv[2])  # as in the test that started this process
    store = Store(Workspace.resolve(sys.argv[1]))
    for _ in sys.stdin:
        before = dict(store._snapshot.state["runs"]) if store._snapshot else {}
        try:
            with store._mutex:
                state = store._load()
        except CatalogCorrupt as exc:
            print(json.dumps({"error": str(exc)}), flush=True)
            continue
        runs = state["runs"]
        kept = sum(1 for k, d in runs.items() if before.get(k) is d)
        print(json.dumps({"state": state, "kept": kept, "whole": whole, "list": store.list_runs(),
                          "events": store.events()}), flush=True)
    """
)


def test_another_process_follows_every_write(ws: Workspace) -> None:
    writer = Store(ws)
    writer.create_runs(_items(20))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _READER, str(ws.root), str(lines_module._CHUNK_BYTES)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)

    def read() -> dict[str, Any]:
        proc.stdin.write("read\n")
        proc.stdin.flush()
        answer = json.loads(proc.stdout.readline())
        if "state" in answer:
            assert _same_tables(answer["state"], _on_disk(ws))
            assert answer["list"] == Store(ws).list_runs() and answer["events"] == Store(ws).events()
        return answer

    try:
        assert read()["kept"] == 0  # the first read parses every line
        writer.transition("r3", "running", add_events=[{"kind": "started", "message": "m"}])
        assert read()["kept"] == 19
        writer.create_runs(_items(2, "late"))
        assert read()["kept"] == 20
        _delete_runs(writer, [5, 22])
        assert read()["kept"] == 20
        writer.upsert_trials("s", [{"number": 0, "state": "complete"}])
        assert read()["kept"] == 20
        with TinyDB(ws.catalog_path) as db:  # a one-line file, TinyDB's own layout
            db.table("runs").update({"note": "tinydb"}, doc_ids=[1])
        assert read()["kept"] == 0
        writer.update_run("r2", note="ours again")
        read()
        writer.update_run("r4", note="incremental again")
        answer = read()
        assert answer["kept"] == 19 and answer["whole"] == 0

        good = ws.catalog_path.read_bytes()
        ws.catalog_path.write_bytes(good[: len(good) // 2])
        answer = read()
        assert "is corrupt" in answer["error"] and "catalog.json.bak" in answer["error"]
        ws.catalog_path.write_bytes(good)
        answer = read()
        assert answer["whole"] == 1  # the truncated file, reported by the whole parse
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0


# -------------------------------------------------------------- property test

_STATES = [s.value for s in RunState]
_op = st.one_of(
    st.tuples(st.just("create"), st.integers(1, 3)),
    st.tuples(st.just("transition"), st.integers(1, 12), st.sampled_from(_STATES)),
    st.tuples(st.just("update"), st.integers(1, 12), st.text(max_size=8)),
    st.tuples(st.just("epoch"), st.integers(1, 12), st.integers(0, 4)),
    st.tuples(st.just("delete"), st.integers(1, 12)),
    st.tuples(st.just("trial"), st.integers(0, 5), st.sampled_from(["running", "complete", "pruned"])),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("read")),
)


def _apply(store: Store, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "create":
        store.create_runs(_items(op[1]))
        return
    if kind == "trial":
        store.upsert_trials("s", [{"number": op[1], "state": op[2]}])
        return
    if kind == "read":  # vandalise what is handed out: the cache must not care
        for record in store.list_runs() + store.events() + store.list_trials("s"):
            record.clear()
        return
    run = store.get_run(op[1])
    if run is None:
        return
    if kind == "transition":
        target = RunState(op[2])
        if target in TRANSITIONS[RunState(run["state"])]:
            store.transition(run["id"], target, add_events=[{"kind": "moved", "message": op[2]}])
    elif kind == "update":
        store.update_run(run["id"], note=op[2])
    elif kind == "epoch":
        store.record_epoch_and_events(run["id"], HISTORY[op[2]], [{"kind": "epoch", "message": str(op[2])}])
    elif kind == "delete":
        _delete_runs(store, [op[1]])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.booleans(), _op), min_size=1, max_size=25))
def test_two_stores_always_agree_with_a_whole_parse(ops: list[tuple[bool, tuple[Any, ...]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws").ensure()
        stores = [Store(ws), Store(ws)]
        stores[0].create_runs(_items(4))
        for second, op in ops:
            if op[0] == "reopen":
                stores[second] = Store(ws)
            else:
                _apply(stores[second], op)
            disk = _on_disk(ws)
            for store in stores:
                assert _same_tables(_cache(store), disk)
                _check_cache(store)
            assert ws.catalog_path.read_bytes() == lines_module.serialize(disk, {}, {})
