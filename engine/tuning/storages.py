"""Any Optuna storage, opened to read: every study in it, trialdeck's or not, as trialdeck's documents.

`--storage` takes an SQLAlchemy URL (`sqlite:///`, `postgresql://`,
`mysql://`) or the path of an Optuna journal file (as optuna-dashboard takes
it). Opened here, a storage is read-only at its source: SQLite through a
`mode=ro` connection, PostgreSQL in read-only transactions, a journal file
through a backend that refuses to append; nothing creates tables, stamps a
schema version or touches a file that is not there. Studies another process
writes stay live: RDB reads go through Optuna's `_CachedStorage` (finished
trials once, then only new and unfinished ones) and a journal replays only
what was appended since the last read.

A storage that cannot be opened is one BadInput line naming the URL and why
(a missing driver names the extra that installs it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend

from trialdeck.engine.errors import BadInput
from trialdeck.engine.presets.schema import TuneConfig
from trialdeck.engine.tuning import pareto, records
from trialdeck.engine.tuning.halving import VALUES_ATTR
from trialdeck.engine.tuning.launch import RDB_PREFIXES, redact
from trialdeck.engine.tuning.space import decode_params

_READERS: dict[str, Any] = {}
_LOCK = threading.Lock()
URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def parse(text: str) -> str:
    """A `--storage` argument as a storage URL: an RDB URL as given, a journal file's path
    as "journal:<absolute path>" (the form trialdeck's catalogue stores)."""
    text = text.strip()
    if text.startswith("journal:"):
        return text
    if URL_RE.match(text):
        scheme = text.split(":", 1)[0].split("+", 1)[0]
        if scheme not in RDB_PREFIXES:
            raise BadInput(f"--storage {redact(text)}: allowed: sqlite:///PATH, postgresql://USER@HOST/DB, "
                           "mysql://USER@HOST/DB, or the path of an Optuna journal file")
        return text
    return f"journal:{Path(text).expanduser().resolve()}"


def shown(url: str) -> str:
    """The URL as a person reads it: a journal's path, an RDB URL without its password."""
    return url[len("journal:"):] if url.startswith("journal:") else redact(url)


def source(url: str) -> str:
    """The storage in a few characters, where room is short: a file's name, a server's URL."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):]).name
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0]).name
    return redact(url)


class ReadOnlyJournalBackend(JournalFileBackend):
    """Optuna's journal file reader that refuses to append (so a foreign study stays untouched)."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise BadInput(f"{self._file_path}: opened read-only; trialdeck does not write to a study it only shows")


def _driver_problem(url: str) -> str | None:
    scheme = url.split(":", 1)[0]
    if scheme.startswith("postgresql") and importlib.util.find_spec("psycopg2") is None:
        return "the PostgreSQL driver is not installed; install it with: pip install 'trialdeck[postgres]'"
    if scheme.startswith("mysql") and not any(importlib.util.find_spec(m) for m in ("MySQLdb", "pymysql")):
        return "no MySQL driver is installed; install one with: pip install 'trialdeck[mysql]'"
    return None


def _engine_url(url: str) -> tuple[str, dict[str, Any]]:
    """The SQLAlchemy URL and engine options that read `url` without writing to it."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if path in ("", ":memory:"):
            raise BadInput(f"--storage {url}: an in-memory database holds no study; name a file")
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise BadInput(f"--storage {url}: no such file {file} (an Optuna SQLite storage is a file it wrote)")
        return f"sqlite:///file:{file}?mode=ro&uri=true", {}
    if url.startswith("postgresql"):
        engine_url = "postgresql+psycopg2://" + url.split("://", 1)[1] if url.startswith("postgresql://") else url
        return engine_url, {"connect_args": {"options": "-c default_transaction_read_only=on"}}
    if url.startswith("mysql://") and importlib.util.find_spec("MySQLdb") is None:
        return "mysql+pymysql://" + url[len("mysql://"):], {}
    return url, {}


def open_readonly(url: str):
    """The storage at `url`, opened to read (one per URL per process, so reads stay incremental)."""
    with _LOCK:
        if url in _READERS:
            return _READERS[url]
        if url.startswith("journal:"):
            path = Path(url[len("journal:"):])
            if not path.is_file():
                raise BadInput(f"--storage {path}: no such file (a journal file is one Optuna's JournalFileBackend "
                               "wrote; an RDB storage is a URL such as sqlite:///PATH)")
            if not os.access(path, os.R_OK):
                raise BadInput(f"--storage {path}: cannot read it (permission denied)")
            storage: optuna.storages.BaseStorage = optuna.storages.JournalStorage(ReadOnlyJournalBackend(str(path)))
        else:
            problem = _driver_problem(url)
            if problem:
                raise BadInput(f"--storage {redact(url)}: {problem}")
            engine_url, kwargs = _engine_url(url)
            try:
                rdb = optuna.storages.RDBStorage(engine_url, engine_kwargs=kwargs, skip_table_creation=True)
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver/schema errors: one line for the user
                raise BadInput(f"--storage {redact(url)}: cannot open: {_first_line(exc)}") from None
            storage = optuna.storages.get_storage(rdb)  # the _CachedStorage Optuna itself reads through
        _READERS[url] = storage
        return storage


def _first_line(exc: BaseException) -> str:
    """The first line of the deepest cause (Optuna wraps a driver's error in its own)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    if "no such table" in line or ("relation" in line and "does not exist" in line):
        return "it holds no Optuna tables (not an Optuna storage)"
    return line


def _read(url: str, what: str, fn):
    """Run a read, turning a storage's own failure into one line."""
    try:
        return fn()
    except (BadInput, KeyError):
        raise
    except Exception as exc:  # noqa: BLE001 - a lost connection or a corrupt file: one line
        raise BadInput(f"--storage {shown(url)}: cannot read {what}: {_first_line(exc)}") from None


def study_names(url: str) -> list[str]:
    storage = open_readonly(url)
    return _read(url, "its studies", lambda: [s.study_name for s in storage.get_all_studies()])


def load_study(url: str, name: str) -> optuna.Study:
    """Study `name` of the storage at `url`, to read (its own sampler is never used)."""
    storage = open_readonly(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _read(url, f"study {name!r}", lambda: optuna.load_study(
                study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()))
    except KeyError:
        names = study_names(url)
        listed = f"; it has {', '.join(names[:8])}" + (" ..." if len(names) > 8 else "") if names else \
            "; it has no study"
        raise BadInput(f"no study {name!r} in {shown(url)}{listed}") from None


def _meta(user_attrs: dict[str, Any]) -> tuple[dict[str, Any] | None, TuneConfig | None]:
    """A trialdeck study's stored preset and tune block; (None, None) for any other study."""
    meta = user_attrs.get("trialdeck")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        return None, None
    try:
        return meta, TuneConfig.model_validate(meta["config"].get("tune") or {})
    except ValueError:
        return meta, None


def study_doc(url: str, study: optuna.Study, frozen: list | None = None) -> dict[str, Any]:
    """The study's document, as `studies show --json` prints it, from the storage alone: its
    objectives (named as `set_metric_names` named them, else value / values_N), trial counts
    by state, and Optuna's own best trial (one objective) or front (`best_trials`, several)."""
    frozen = study.get_trials(deepcopy=False) if frozen is None else frozen
    directions = [d.name.lower() for d in study.directions]
    meta, tune = _meta(study.user_attrs)
    names = records.metric_names(study.metric_names, len(directions))
    counts: dict[str, int] = {}
    for t in frozen:
        state = t.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
    running = [t for t in frozen if t.state == optuna.trial.TrialState.RUNNING]
    doc: dict[str, Any] = {
        "name": study.study_name,
        "state": "running" if running else "idle",
        "foreign": meta is None,
        "preset": meta.get("preset") if meta else None,
        "metric": names[0],
        "direction": directions[0],
        "directions": directions,
        "objectives": [{"metric": m, "direction": d} for m, d in zip(names, directions, strict=True)],
        "sampler": tune.sampler if tune else None,
        "pruner": tune.pruner.kind if tune else None,
        "storage": shown(url),
        "source": source(url),
        "n_trials": len(frozen),
        "counts": counts,
        "n_done": sum(v for k, v in counts.items() if k in records.FINISHED),
        "best": None,
        "user_attrs": {k: v for k, v in study.user_attrs.items() if k != "trialdeck"},
        # What changes while trials run, though no trial finishes: the views redraw on it.
        "progress": sum(len(t.intermediate_values) + len(t.user_attrs.get(VALUES_ATTR) or ()) for t in running),
    }
    decode = (lambda params: decode_params(tune, params)) if tune is not None else (lambda params: params)
    if len(directions) > 1:
        # The complete trials no other dominates: what `study.best_trials` gives (tests hold it to that),
        # from the trials in hand (best_trials deep-copies every trial first: half a second per 1,000).
        done = [t for t in frozen if t.state == optuna.trial.TrialState.COMPLETE and t.values is not None]
        on = pareto.front_mask(pareto.losses([t.values for t in done], directions)).tolist() if done else []
        doc["pareto"] = sorted(t.number for t, keep in zip(done, on, strict=True) if keep)
    elif counts.get("complete"):
        b = study.best_trial
        doc["best"] = {"number": b.number, "value": b.value, "params": decode(dict(b.params)),
                       "run_id": b.user_attrs.get("run_id")}
    return doc


def read_trials(study: optuna.Study, tune: TuneConfig | None = None, frozen: list | None = None) -> list[dict[str, Any]]:
    multi = len(study.directions) > 1
    decode = (lambda params: decode_params(tune, params)) if tune is not None else None
    frozen = study.get_trials(deepcopy=False) if frozen is None else frozen
    return [records.trial_doc(t, multi, decode) for t in frozen]


def read_study(url: str, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the study's document, its trials' documents), read from the storage at `url`."""
    study = load_study(url, name)
    _, tune = _meta(study.user_attrs)

    def read() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        frozen = study.get_trials(deepcopy=False)
        return study_doc(url, study, frozen), read_trials(study, tune, frozen)

    return _read(url, f"study {name!r}", read)


def list_studies(url: str) -> list[dict[str, Any]]:
    """Every study in the storage: its document without its trials."""
    return [_read(url, f"study {name!r}", lambda name=name: study_doc(url, load_study(url, name)))
            for name in study_names(url)]
