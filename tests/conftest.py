"""Shared fixtures: every test's own workspace, and a PostgreSQL server for the multi-box tuning tests.

`isolated_home` (autouse) points TRIALDECK_HOME at a fresh folder for every test and clears the
variables that change trialdeck's behaviour (debug tracebacks, fault injection, no-autostart), so
no test reads or writes ~/.trialdeck and none leaks into another. Tests that want a workspace of
their own still pass `--home` (or use the `home` fixture); the default one catches a command that
ignores it.

`deck` is the one fixture for tests that drive real engines: `home` plus the commands a user
types against it (tests.deck.Deck, or the test module's `DECK` subclass), its engine.toml from the
`engine_toml` fixture a module may override.

`pg_url` is TRIALDECK_TEST_PG_URL when set (`.ci/run` starts a cluster and sets
it); otherwise a throwaway cluster started here, the way `.ci/run` does it
(initdb + pg_ctl from /usr/lib/postgresql/*/bin, as the postgres user when we
are root, trust auth, loopback only, its socket in its own temp dir, a free
port), and removed at the end of the session. Without PostgreSQL binaries (or
the psycopg2 driver) the tests that need it are skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_ENV = "TRIALDECK_TEST_PG_URL"
SHARED_SCOPES = ("module", "class", "package")
BEHAVIOUR_VARS = ("TRIALDECK_DEBUG", "TRIALDECK_INJECT_FAULT", "TRIALDECK_NO_AUTOSTART")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`.ci/run`: `-n auto --dist loadgroup`), the tests of a module that share an
    expensive fixture (a module's engines, a Dask cluster, a built wheel) go to one worker, so it is
    set up once; every other test goes wherever a worker is free."""
    manager = config.pluginmanager.get_plugin("funcmanage")
    for item in items:
        names = getattr(item, "fixturenames", ())
        shared = any(d.scope in SHARED_SCOPES for name in names
                     for d in (manager.getfixturedefs(name, item) if manager is not None else None) or ())
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default workspace of this test (TRIALDECK_HOME), separate from any `--home` it passes."""
    default = tmp_path / "default-home"
    monkeypatch.setenv("TRIALDECK_HOME", str(default))
    for name in BEHAVIOUR_VARS:
        monkeypatch.delenv(name, raising=False)
    return default


@pytest.fixture
def home(tmp_path: Path):
    """A workspace folder for commands run with `--home`; its engine is stopped at the end."""
    from tests.deck import stop_engine

    path = tmp_path / "ws"
    yield path
    stop_engine(path)


@pytest.fixture
def engine_toml() -> str | None:
    """The engine.toml the `deck` fixture's workspace starts with (None: none). A module overrides
    this fixture (parametrized for several backends, say) to give its engines a configuration."""
    return None


@pytest.fixture
def deck(request: pytest.FixtureRequest, home: Path, isolated_home: Path, engine_toml: str | None):
    """The one workspace-and-commands fixture (tests.deck.Deck, or the module's `DECK` subclass of it)
    for tests that start real engines; its engine is stopped at the end."""
    from tests.deck import Deck

    home.mkdir(parents=True, exist_ok=True)
    if engine_toml is not None:
        (home / "engine.toml").write_text(engine_toml)
    deck = getattr(request.module, "DECK", Deck)(home, isolated_home)
    yield deck
    deck.stop()


def _pg_bindir() -> Path | None:
    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parts[-3]  # /usr/lib/postgresql/<version>/bin/pg_ctl
        return tuple(int(p) for p in part.split(".") if p.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_url():
    url = os.environ.get(PG_ENV)
    if url:
        yield url
        return
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e '.[test]')")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip(f"no PostgreSQL binaries in /usr/lib/postgresql/*/bin and {PG_ENV} is not set")
    as_root = os.geteuid() == 0
    if as_root:
        import pwd

        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        prefix = ["runuser", "-u", "postgres", "--"]
    else:
        prefix = []
    root = Path(tempfile.mkdtemp(prefix="trialdeck-pg."))
    if as_root:
        os.chown(root, pg_user.pw_uid, pg_user.pw_gid)
    data, log = root / "data", root / "log"

    def pg(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout)

    started = False
    try:
        proc = pg(str(bindir / "initdb"), "-D", str(data), "-U", "trialdeck", "--auth=trust")
        assert proc.returncode == 0, f"initdb failed:\n{proc.stdout}\n{proc.stderr}"
        for _ in range(5):  # another process may take the free port between our probe and the bind
            port = _free_port()
            options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
                       "-c max_connections=200 -c fsync=off")
            proc = pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")
            if proc.returncode == 0:
                started = True
                break
            time.sleep(0.2)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        assert started, f"pg_ctl start failed:\n{proc.stdout}\n{proc.stderr}\n{tail}"
        proc = pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "trialdeck", "trialdeck_test")
        assert proc.returncode == 0, f"createdb failed:\n{proc.stdout}\n{proc.stderr}"
        yield f"postgresql://trialdeck@127.0.0.1:{port}/trialdeck_test"
    finally:
        if started:
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop", timeout=60)
        shutil.rmtree(root, ignore_errors=True)
