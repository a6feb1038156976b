"""The scheduler on simulated machines: slots, queue order, pinning, and packing by measured memory."""

from __future__ import annotations

from trialdeck.engine.runtime.placement.scheduler import (
    AUTO_MAX_PER_GPU,
    GIB,
    MARGIN_BYTES,
    SATURATED_UTIL,
    GpuInfo,
    Scheduler,
    auto_slots_per_gpu,
    footprint,
    make_slots,
)


def gpus(n: int, total: int = 80 * GIB) -> list[GpuInfo]:
    return [GpuInfo(i, "H100", total, total) for i in range(n)]


def run(rid: str, *, hidden=(256, 256), lr=0.1, seed=0, device=None, batch=64, preset_device="auto") -> dict:
    config = {"data": {"dataset": "digits", "batch_size": batch}, "model": {"kind": "mlp", "hidden": list(hidden)},
              "optimizer": {"lr": lr}, "train": {"seed": seed, "precision": "fp32", "compile": False,
                                                 "device": preset_device},
              "augment": {"rotation": 0.0}}
    return {"id": rid, "config": config, **({"device": device} if device else {})}


def placed(plan) -> list[tuple[str, str]]:
    return [(p.run_id, p.slot.name) for p in plan]


def test_slots_come_from_the_machine():
    assert [s.name for s in make_slots([], cpu_slots=3)] == ["cpu.0", "cpu.1", "cpu.2"]
    assert [s.name for s in make_slots([])] == ["cpu.0"]
    assert [s.device for s in make_slots(gpus(2), 2)] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]


def test_automatic_slots_per_gpu_follow_the_cores():
    assert auto_slots_per_gpu(1, cpu_count=16) == AUTO_MAX_PER_GPU
    assert auto_slots_per_gpu(4, cpu_count=16) == 4
    assert auto_slots_per_gpu(8, cpu_count=4) == 1
    assert len(make_slots(gpus(1))) == auto_slots_per_gpu(1)


def test_queue_order_is_kept_and_each_slot_takes_one_run():
    s = Scheduler(make_slots([], cpu_slots=2))
    plan = s.plan([run("r3"), run("r1"), run("r2")])
    assert placed(plan) == [("r3", "cpu.0"), ("r1", "cpu.1")]
    assert s.plan([run("r2")]) == []
    s.release("r3")
    assert placed(s.plan([run("r2")])) == [("r2", "cpu.0")]


def test_a_pinned_run_waits_for_its_device_while_others_pass_it():
    s = Scheduler(make_slots(gpus(2), 1))
    plan = s.plan([run("r1", device="cuda:1"), run("r2", device="cuda:1"), run("r3")], {0: 80 * GIB, 1: 80 * GIB})
    assert placed(plan) == [("r1", "gpu1.0"), ("r3", "gpu0.0")]
    assert [p.device for p in plan] == ["cuda", "cuda"]
    cpu_only = Scheduler(make_slots([], cpu_slots=1))
    assert cpu_only.plan([run("r4", device="cuda")]) == []


def test_the_presets_device_pins_like_the_command_line():
    s = Scheduler(make_slots(gpus(2), 1))
    plan = s.plan([run("r1", preset_device="cuda:1"), run("r2", preset_device="cpu")], {0: 80 * GIB, 1: 80 * GIB})
    assert [(p.run_id, p.slot.name, p.device) for p in plan] == [("r1", "gpu1.0", "cuda"), ("r2", "gpu0.0", "cpu")]
    # `--device` (the record's `pinned`) wins over the preset; `device` alone is where a run last ran.
    s = Scheduler(make_slots(gpus(2), 1))
    plan = s.plan([{**run("r3", preset_device="cuda:1"), "pinned": "cuda:0", "device": "cuda:1"}], {0: 80 * GIB})
    assert placed(plan) == [("r3", "gpu0.0")]


def test_a_run_pinned_to_a_gpu_the_box_lacks_is_refused_with_the_reason():
    cpu_only = Scheduler(make_slots([], cpu_slots=2))
    assert cpu_only.impossible(run("r1", preset_device="cuda")) == (
        "device 'cuda' was asked for, but this machine has no NVIDIA GPU the engine can see")
    assert cpu_only.impossible(run("r1")) is None and cpu_only.impossible(run("r1", device="cpu")) is None
    two = Scheduler(make_slots(gpus(2), 1))
    assert two.impossible(run("r2", device="cuda:3")) == "device 'cuda:3' was asked for, but its GPUs are cuda:0, cuda:1"
    assert two.impossible(run("r2", device="cuda:1")) is None and two.impossible(run("r2", device="cuda")) is None


def test_an_ensemble_neither_joins_nor_is_joined_on_the_strength_of_one_runs_measurement():
    s = Scheduler(make_slots(gpus(1), 4))
    s.plan([run("r1")], {0: 80 * GIB})
    s.learn("r1", GIB)
    assert s.plan([{**run("r2"), "members": 16}], {0: 79 * GIB}, {0: 5}) == []  # 16 members need ~16x
    s.release("r1")
    assert placed(s.plan([{**run("r2"), "members": 16}], {0: 80 * GIB})) == [("r2", "gpu0.0")]
    assert s.plan([run("r3")], {0: 78 * GIB}, {0: 5}) == []  # its neighbour's need is unknown


def test_a_measured_run_waits_while_its_gpu_neighbour_is_unmeasured():
    s = Scheduler(make_slots(gpus(1), 4))
    s.plan([run("r1")], {0: 80 * GIB})
    s.learn("r1", GIB)
    s.release("r1")
    s.plan([run("big", hidden=(4096, 4096))], {0: 80 * GIB})  # never measured: it may not have allocated yet
    assert s.plan([run("r2")], {0: 79 * GIB}, {0: 5}) == []
    s.learn("big", 20 * GIB)
    assert placed(s.plan([run("r2")], {0: 59 * GIB}, {0: 5})) == [("r2", "gpu0.1")]


def test_an_unmeasured_run_never_joins_a_busy_gpu():
    s = Scheduler(make_slots(gpus(1), 4))
    plan = s.plan([run("r1"), run("r2")], {0: 80 * GIB}, {0: 10})
    assert placed(plan) == [("r1", "gpu0.0")]  # r2 waits: nothing is known of what it needs


def test_measured_runs_of_the_same_footprint_pack_until_memory_runs_out():
    s = Scheduler(make_slots(gpus(1), 8))
    assert placed(s.plan([run("r1")], {0: 10 * GIB})) == [("r1", "gpu0.0")]
    s.learn("r1", 3 * GIB)  # r1's first epoch: 3 GiB peak
    # Another trial (other lr and seed, same data and model) is known to need 3 GiB too.
    free = 6 * GIB  # what NVML reports with r1 running
    plan = s.plan([run("r2", lr=0.01, seed=1), run("r3", lr=0.5), run("r4", hidden=(512,))], {0: free}, {0: 30})
    assert placed(plan) == [("r2", "gpu0.1")]  # r3 would leave less than the margin; r4 was never measured
    assert free - 3 * GIB < 3 * GIB + MARGIN_BYTES


def test_runs_placed_but_not_yet_measured_count_against_a_stale_reading():
    s = Scheduler(make_slots(gpus(1), 8))
    s.plan([run("r1")], {0: 80 * GIB})
    s.learn("r1", 10 * GIB)
    # NVML still says 30 GiB free while r2 and r3 have not allocated: 30 - 2 x 10 leaves room for none more.
    assert placed(s.plan([run("r2"), run("r3"), run("r4")], {0: 30 * GIB}, {0: 5})) == [("r2", "gpu0.1"),
                                                                                         ("r3", "gpu0.2")]
    assert s.plan([run("r4")], {0: 30 * GIB}, {0: 5}) == []  # the next dispatch, same stale reading
    s.learn("r2", 10 * GIB)
    s.learn("r3", 10 * GIB)
    assert s.plan([run("r4")], {0: 10 * GIB}, {0: 5}) == []  # now NVML counts them: 10 GiB is not 10 + margin
    assert placed(s.plan([run("r4")], {0: 11 * GIB}, {0: 5})) == [("r4", "gpu0.3")]


def test_a_saturated_gpu_takes_no_further_run():
    s = Scheduler(make_slots(gpus(1), 4))
    s.plan([run("r1")], {0: 80 * GIB})
    s.learn("r1", GIB)
    assert s.plan([run("r2")], {0: 79 * GIB}, {0: SATURATED_UTIL}) == []
    assert placed(s.plan([run("r2")], {0: 79 * GIB}, {0: SATURATED_UTIL - 20})) == [("r2", "gpu0.1")]


def test_without_an_nvml_reading_a_busy_gpu_is_not_shared():
    s = Scheduler(make_slots(gpus(1), 2))
    s.plan([run("r1")], {})
    s.learn("r1", GIB)
    assert s.plan([run("r2")], {}) == []


def test_footprint_ignores_what_does_not_change_memory():
    assert footprint(run("a", lr=0.1, seed=0)["config"]) == footprint(run("b", lr=0.001, seed=7)["config"])
    assert footprint(run("a")["config"]) != footprint(run("b", hidden=(512, 512))["config"])
    assert footprint(run("a")["config"]) != footprint(run("b", batch=256)["config"])
    assert footprint(None) is None


def test_a_larger_later_measurement_wins():
    s = Scheduler(make_slots(gpus(1), 2))
    s.plan([run("r1")], {0: 80 * GIB})
    s.learn("r1", GIB)
    s.learn("r1", 2 * GIB)
    s.learn("r1", GIB // 2)
    assert s.need_of(run("x")) == 2 * GIB
    s.release("r1")
    s.learn("r1", 9 * GIB)  # a late report for a released run is ignored
    assert s.need_of(run("x")) == 2 * GIB


def test_the_engine_learns_a_workers_memory_report(tmp_path):
    """Wiring: a worker's MemoryMeasured(run, bytes) message reaches the scheduler's table."""
    import multiprocessing as mp

    from trialdeck.engine.runtime.config import EngineConfig
    from trialdeck.engine.runtime.daemon import Engine
    from trialdeck.engine.runtime.placement.local import LocalPlacement, WorkerHandle
    from trialdeck.engine.runtime.workers.messages import MemoryMeasured
    from trialdeck.engine.workspace import Workspace

    engine = Engine(Workspace(tmp_path / "ws").ensure(), EngineConfig(cpu_slots=1))
    placement = engine.placement
    assert isinstance(placement, LocalPlacement)
    slot = placement.scheduler.slots[0]
    placement.scheduler.plan([run("r1")])
    parent, child = mp.Pipe()
    handle = WorkerHandle(slot, process=None, conn=parent, stop=None, run_id="r1")
    child.send(MemoryMeasured("r1", 3 * GIB))
    placement._on_message(handle)
    assert placement.scheduler.need_of(run("r9", lr=0.5)) == 3 * GIB


def test_the_worker_reports_once_after_the_first_epoch():
    import multiprocessing as mp

    from trialdeck.engine.presets import resolve
    from trialdeck.engine.runtime.runners.base import StopRequests
    from trialdeck.engine.runtime.workers.local import SharedStop
    from trialdeck.engine.training.trainer import train

    calls = []
    stop = SharedStop(mp.get_context("spawn"), 4)
    result = train(resolve("seed/step-decay", ["train.epochs=3"]),
                   StopRequests(stop, "r1", first_epoch=lambda: calls.append(len(calls))))
    assert result.state.value == "completed" and calls == [0]


def test_a_worker_leaves_after_a_cuda_error_that_poisons_its_context(tmp_path):
    """A device-side assert or illegal address breaks the process's CUDA context for good;
    out of memory does not. The worker exits after the first (the engine starts a new one)."""
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.runtime.workers.local import _cuda_broken
    from trialdeck.engine.types import RunState
    from trialdeck.engine.workspace import Workspace

    store = Store(Workspace(tmp_path / "ws").ensure())
    errors = {"r1": "AcceleratorError: CUDA error: device-side assert triggered at epoch 2",
              "r2": "CUDA out of memory at epoch 1", "r3": None}
    for run_id, error in errors.items():
        store.create_run(preset="p", config={}, config_hash="h")
        store.transition(run_id, RunState.RUNNING)
        store.transition(run_id, RunState.FAILED if error else RunState.COMPLETED, error=error)
    assert _cuda_broken(store, ["r1"]) and _cuda_broken(store, ["r3", "r1"])
    assert not _cuda_broken(store, ["r2"]) and not _cuda_broken(store, ["r2", "r3"])


def test_cuda_visible_devices_by_index_or_uuid(monkeypatch):
    from trialdeck.engine.runtime.placement.gpus import _visible

    gpu = GpuInfo(1, "H100", 80 * GIB, 80 * GIB, uuid="GPU-8f3c1a2b-0000-1111-2222-333344445555")
    assert _visible(gpu, "1") and _visible(gpu, "0, 1") and not _visible(gpu, "0")
    assert _visible(gpu, "GPU-8f3c1a2b-0000-1111-2222-333344445555") and _visible(gpu, "GPU-8f3c")
    assert not _visible(gpu, "GPU-aaaa") and not _visible(gpu, "") and not _visible(gpu, "MIG-1234")
