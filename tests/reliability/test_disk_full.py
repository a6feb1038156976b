"""Disk full during a write: the previous state stays readable and the error is clear."""

from __future__ import annotations

import errno
import json
import os
from unittest import mock

import pytest

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import StorageError
from trialdeck.engine.presets import resolve
from trialdeck.engine.training.trainer import save_checkpoint
from trialdeck.engine.workspace import Workspace, atomic_write


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_catalog_write_on_a_full_disk_keeps_the_previous_state(tmp_path):
    store = Store(Workspace(tmp_path / "ws").ensure())
    spec = resolve("seed/step-decay")
    first = store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash)
    before = store.path.read_bytes()
    with mock.patch("os.write", no_space):
        with pytest.raises(StorageError) as info:
            store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash)
    message = str(info.value)
    assert str(store.path) in message and "No space left on device" in message and "previous version is intact" in message
    assert store.path.read_bytes() == before
    assert json.loads(before)  # still parses
    assert [r["id"] for r in store.list_runs()] == [first["id"]], "the failed write must not linger in the cache"
    assert [r["id"] for r in Store(store.workspace).list_runs()] == [first["id"]]
    assert not list(store.path.parent.glob(".catalog.json.tmp-*")), "no temp file left behind"
    # Space comes back: writing works again and ids continue.
    assert store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash)["id"] == "r2"


def test_atomic_write_on_a_full_disk_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.json"
    atomic_write(path, b'{"v": 1}')
    with mock.patch("os.fsync", no_space):
        with pytest.raises(StorageError):
            atomic_write(path, b'{"v": 2}')
    assert path.read_bytes() == b'{"v": 1}'


def test_checkpoint_write_on_a_full_disk_leaves_the_old_checkpoint(tmp_path):
    import torch

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    with mock.patch("os.fsync", no_space), pytest.raises(StorageError, match="No space left on device"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temp file left behind"
