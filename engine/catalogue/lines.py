"""The bytes of `catalog.json`: its one-document-per-line layout, and reading it incrementally.

The tables that grow (`runs`, `trials`, `events`) are written one document per
line: `{"meta":{..},"runs":{\n"1":{..},\n"2":{..}\n},"studies":{..},...}`.
Newlines between members are plain JSON whitespace and orjson never writes one
inside a document, so TinyDB and `json.load` read the file as ever.

A reader keeps each growing table's lines in chunks of about 64 KB with the
documents they parsed to (`Fragments`); `parse_lines` re-reads a changed file
confirming unchanged chunks with one `startswith` and parsing only changed or
new lines, plus the small tables. `serialize` writes a state re-encoding only
the documents a transaction touched. Anything not in this layout makes
`parse_lines` return None, and the store parses the file whole. Used only by
`trialdeck.engine.catalogue.store`, which owns the file, its lock and its cache.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any

import orjson

# Tables that grow with use: written one document per line, and their lines are
# cached in chunks between reads and writes.
_FRAGMENT_TABLES = ("runs", "trials", "events")
_OPENERS = tuple((name, b'"' + name.encode() + b'":{') for name in _FRAGMENT_TABLES)
# Stands in for a table's document lines while the rest of the file is parsed;
# no real document key starts with a NUL.
_GROUP_KEY = "\0trialdeck-lines"
_GROUP_MEMBER = orjson.dumps(_GROUP_KEY) + b":%d"
_QUOTE, _COMMA, _NEWLINE = ord('"'), ord(","), ord("\n")
# About this many bytes of lines per chunk: one `startswith` checks them all, and
# a change re-reads at most this much line by line. Small enough never to need
# a fresh mmap from malloc, large enough that 50 MB is under a thousand chunks.
_CHUNK_BYTES = 64 * 1024


class _Chunk:
    """Consecutive document lines of one table, as they appear in the file.

    `data` is the lines joined with ",\\n"; `keys` and `docs` are what they
    parse to, in order. Where each line ends (`ends`) and which line holds a key
    (`index`) are worked out only when a change needs them, and only if every
    line is one `"key":{...}` member (a hand-edited file may differ; such a
    chunk is then reused whole or not at all).
    """

    __slots__ = ("data", "keys", "docs", "_ends", "_index")

    def __init__(self, data: bytes, keys: list[str], docs: list[dict[str, Any]], ends: list[int] | None = None) -> None:
        self.data, self.keys, self.docs = data, keys, docs
        self._ends = ends
        self._index: dict[str, int] | None = None

    def ends(self) -> list[int] | None:
        """Where each line ends in `data`, or None if the lines are not one member each."""
        if self._ends is None:
            data, keys = self.data, self.keys
            ends, start = [], 0
            for key in keys:
                if not data.startswith(orjson.dumps(key) + b":", start):
                    return None
                end = data.find(b",\n", start)
                ends.append(len(data) if end < 0 else end)
                start = ends[-1] + 2
            if start != len(data) + 2:
                return None
            self._ends = ends
        return self._ends

    def line(self, i: int) -> bytes:
        ends = self._ends
        assert ends is not None
        return self.data[ends[i - 1] + 2 if i else 0 : ends[i]]

    def find(self, key: str) -> int | None:
        if self._index is None:
            self._index = dict(zip(self.keys, range(len(self.keys)))) if self.ends() is not None else {}
        return self._index.get(key)


class _ChunkBuilder:
    """Collects a table's lines in file order into chunks of about `_CHUNK_BYTES`."""

    def __init__(self) -> None:
        self.chunks: list[_Chunk] = []
        self._lines: list[bytes] = []
        self._keys: list[str] = []
        self._docs: list[dict[str, Any]] = []
        self._size = 0

    def line(self, key: str, doc: dict[str, Any], line: bytes) -> None:
        self._lines.append(line)
        self._keys.append(key)
        self._docs.append(doc)
        self._size += len(line) + 2
        if self._size >= _CHUNK_BYTES:
            self._flush()

    def chunk(self, chunk: _Chunk) -> None:
        """An unchanged chunk: kept as it is, unless small enough to merge with its neighbours."""
        if len(chunk.data) < _CHUNK_BYTES // 2 and chunk.ends() is not None:
            for i, (key, doc) in enumerate(zip(chunk.keys, chunk.docs)):
                self.line(key, doc, chunk.line(i))
            return
        self._flush()
        self.chunks.append(chunk)

    def _flush(self) -> None:
        if not self._lines:
            return
        ends, end = [], -2
        for line in self._lines:
            end += len(line) + 2
            ends.append(end)
        self.chunks.append(_Chunk(b",\n".join(self._lines), self._keys, self._docs, ends))
        self._lines, self._keys, self._docs, self._size = [], [], [], 0

    def finish(self) -> list[_Chunk]:
        self._flush()
        return self.chunks


# table -> its lines, in file order
Fragments = dict[str, list[_Chunk]]


def _encode_doc(key: str, doc: dict[str, Any]) -> bytes:
    return orjson.dumps(key) + b":" + orjson.dumps(doc)


def _rechunk(table: dict[str, Any], old: list[_Chunk], changed: set[str]) -> list[_Chunk]:
    """The table's lines after a transaction, re-encoding only changed documents.

    TinyDB keeps a table's order, removes in place and appends inserts, so the
    old chunks in order, minus what was removed, plus the new documents at the
    end, list the table; that is checked, and anything else is encoded afresh.
    """
    builder = _ChunkBuilder()
    get = table.get
    kept = 0
    for chunk in old:
        now = list(map(get, chunk.keys))
        # Identity guards against a document replaced (not mutated) behind our back.
        if changed.isdisjoint(chunk.keys) and all(map(operator.is_, now, chunk.docs)):
            builder.chunk(chunk)
            kept += len(now)
            continue
        lines_known = chunk.ends() is not None
        for i, (key, doc, was) in enumerate(zip(chunk.keys, now, chunk.docs)):
            if doc is None:
                continue
            reuse = lines_known and doc is was and key not in changed
            builder.line(key, doc, chunk.line(i) if reuse else _encode_doc(key, doc))
            kept += 1
    if kept <= len(table):  # more only if a hand-edited file repeated a key
        added = list(itertools.islice(reversed(table), len(table) - kept))[::-1]
        for key in added:
            builder.line(key, table[key], _encode_doc(key, table[key]))
    chunks = builder.finish()
    if list(itertools.chain.from_iterable(c.keys for c in chunks)) != list(table):
        builder = _ChunkBuilder()
        for key, doc in table.items():
            builder.line(key, doc, _encode_doc(key, doc))
        chunks = builder.finish()
    return chunks


def serialize(state: dict[str, dict[str, Any]], fragments: Fragments, touched: dict[str, set[str] | None]) -> bytes:
    """The catalogue file, re-encoding only changed documents; updates `fragments` to match.

    Compact JSON (what `orjson.dumps(state)` gives) except that a non-empty
    fragment table puts each document on its own line: `"runs":{\\n"1":{..},\\n
    "2":{..}\\n}`. A write usually changes one run; re-encoding the other
    thousands each time made serialisation most of an enqueue's cost.
    """
    out: list[bytes] = [b"{"]
    for name, table in state.items():
        out.append(orjson.dumps(name) + b":")
        if name not in _FRAGMENT_TABLES or not table:
            fragments.pop(name, None)
            out.append(orjson.dumps(table))
            out.append(b",")
            continue
        changed = touched.get(name, set())
        old = fragments.get(name, []) if changed is not None else []
        chunks = fragments[name] = _rechunk(table, old, changed or set())
        out.append(b"{\n")
        for chunk in chunks:
            out.append(chunk.data)
            out.append(b",\n")
        out[-1] = b"\n},"
    out[-1] = out[-1][:-1] + b"}" if len(out) > 1 else b"{}"
    return b"".join(out)


def parse_lines(data: bytes | bytearray, size: int, previous: Fragments) -> tuple[dict[str, Any], Fragments] | None:
    """Parse `data[:size]`, a file in `serialize`'s layout, reusing `previous` documents whose lines are unchanged.

    Returns the top-level object and the new chunks, or None when the file is
    not in that layout or does not parse (the caller then parses it whole,
    which also names what is wrong). An unchanged chunk of lines costs one
    `startswith`; only changed lines and the lines outside the growing tables
    (meta, studies: small) are parsed. A file in another layout (one line, as
    TinyDB or older versions write it) is parsed whole here.

    Whole-file validity is kept: the outside lines are parsed together, each
    table's lines replaced by one `_GROUP_KEY` member whose value the result
    must show at the top level (so a table name nested in some document is
    never mistaken for the table); document lines are parsed (or matched)
    whole, one or one chunk at a time, with commas exactly where JSON needs
    them.
    """
    outside: list[Any] = []
    groups: list[tuple[str, dict[str, Any]]] = []
    fragments: Fragments = {}
    find, startswith = data.find, data.startswith
    view = memoryview(data)
    pos = 0
    while True:
        end = find(b"\n", pos, size)
        if end < 0:
            outside.append(view[pos:size])
            break
        outside.append(view[pos:end])
        start, pos = pos, end + 1
        name = next((n for n, o in _OPENERS if end - len(o) >= start and startswith(o, end - len(o), end)), None)
        if name is None:
            continue
        old = previous.get(name)
        read = (_read_group(data, size, pos, old) if old else None) or _read_new_group(data, size, pos)
        if read is None:
            return None
        table, chunks, pos = read
        outside.append(_GROUP_MEMBER % len(groups))
        groups.append((name, table))
        fragments[name] = chunks
    try:
        raw = orjson.loads(outside[0] if len(outside) == 1 else b"\n".join(outside))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    for index, (name, table) in enumerate(groups):
        if raw.get(name) != {_GROUP_KEY: index}:
            return None
        raw[name] = table
    # Document lines were checked as they were read; the tables parsed whole are checked here.
    if not all(name in fragments or is_table(table) for name, table in raw.items()):
        return None
    return raw, fragments


_Group = tuple[dict[str, Any], list[_Chunk], int]


def _read_new_group(data: bytes | bytearray, size: int, pos: int) -> _Group | None:
    """A table's lines with nothing to reuse: parsed a chunk at a time (about one `loads` of them all).

    Returns the table, its chunks and where its closing line starts; None if
    the lines are not in our layout (the caller then tries a whole parse).
    """
    close = data.find(b"\n}", pos - 1, size)  # documents hold no newline, so the first "\n}" closes the table
    if close < pos:
        return None
    table: dict[str, Any] = {}
    chunks = []
    view = memoryview(data)
    start = pos
    while start < close:
        end = data.find(b",\n", start + _CHUNK_BYTES, close)
        end = close if end < 0 else end
        chunk_data = bytes(view[start:end])
        try:
            docs = orjson.loads(b"{" + chunk_data + b"}")
        except orjson.JSONDecodeError:
            return None
        if not is_table(docs):
            return None
        table.update(docs)
        chunks.append(_Chunk(chunk_data, list(docs), list(docs.values())))
        start = end + 2
    if start != close + 2:  # a comma before the closing line
        return None
    return table, chunks, close + 1


def _read_group(data: bytes | bytearray, size: int, pos: int, old: list[_Chunk]) -> _Group | None:
    """A table's lines, reusing every old chunk found byte for byte and every unchanged line.

    Old chunks are expected in order: at each line the next one is tried
    whole. Where one fails (a line changed, was removed or added), lines are
    read one by one, each looked up in the chunks around the last one seen
    (or, for a key not there, in all of them), until the next chunk matches
    again. Returns as `_read_new_group` does.
    """
    find, startswith = data.find, data.startswith
    view = memoryview(data)
    builder = _ChunkBuilder()
    table: dict[str, Any] = {}
    n_old, nxt = len(old), 0
    chunk_of: dict[str, int] | None = None
    comma = True
    while True:
        if nxt < n_old:
            chunk = old[nxt]
            after = pos + len(chunk.data)
            if (
                after < size
                and startswith(chunk.data, pos)
                and (data[after] == _NEWLINE or (data[after] == _COMMA and after + 1 < size and data[after + 1] == _NEWLINE))
            ):
                if not comma:
                    return None
                table.update(zip(chunk.keys, chunk.docs))
                builder.chunk(chunk)
                nxt += 1
                comma = data[after] == _COMMA
                pos = after + (2 if comma else 1)
                continue
        end = find(b"\n", pos, size)
        if end < 0:
            end = size
        if pos == end or data[pos] != _QUOTE:
            break
        if not comma:  # the previous document line had no comma before this one
            return None
        comma = data[end - 1] == _COMMA
        stop = end - 1 if comma else end
        colon = find(b'":', pos + 1, stop)
        raw_key = data[pos + 1 : colon] if colon > 0 else b""
        if raw_key.isdigit():  # TinyDB's keys: no escapes, so the first quote closes the key
            key = raw_key.decode()
            doc = None
            j = next((j for j in (nxt - 1, nxt, nxt + 1) if 0 <= j < n_old and old[j].find(key) is not None), None)
            if j is None and nxt < n_old:  # removed or moved lines: look further, once per table
                if chunk_of is None:
                    chunk_of = {k: j for j, chunk in enumerate(old) for k in chunk.keys}
                j = chunk_of.get(key)
            if j is not None and (i := old[j].find(key)) is not None:
                line = old[j].line(i)
                if len(line) == stop - pos and startswith(line, pos):
                    doc = old[j].docs[i]
                nxt = j + 1
            if doc is None:
                try:
                    doc = orjson.loads(view[colon + 2 : stop])
                except orjson.JSONDecodeError:
                    return None
                line = bytes(view[pos:stop])
        else:
            line = bytes(view[pos:stop])
            try:
                member = orjson.loads(b"{" + line + b"}")
            except orjson.JSONDecodeError:
                return None
            if len(member) != 1:
                return None
            [(key, doc)] = member.items()
        if not isinstance(doc, dict):
            return None
        table[key] = doc
        builder.line(key, doc, line)
        pos = end + 1
    if comma:  # the last document line ended with a comma, or there was none
        return None
    return table, builder.finish(), pos


def is_table(table: Any) -> bool:
    return isinstance(table, dict) and all(isinstance(doc, dict) for doc in table.values())
