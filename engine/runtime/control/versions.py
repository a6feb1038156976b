"""Which torch this box has, the CUDA it was built for, what the NVIDIA driver supports, and
whether they fit (`trialdeck engine status`).

Read without importing torch (about a second, and `engine status` must stay quick):
the version from the installed package's metadata and `torch/version.py` read as
text; the driver through NVML. `fit_warning` is pure, so every mismatch is tested
with made-up versions on a box without a GPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path
from typing import Any

PYTORCH_CUDA_WHEELS = ("11.8", "12.1", "12.4", "12.6", "12.8", "12.9", "13.0")
"""CUDA versions PyTorch publishes wheel indexes for (https://download.pytorch.org/whl/cu126, ...),
as listed at https://pytorch.org/get-started/locally/ when this was written."""
INDEX = "https://download.pytorch.org/whl/"

_ASSIGN = r"^{name}\s*(?::[^=\n]*)?=\s*(?:'([^']*)'|\"([^\"]*)\"|None)"


def torch_build() -> tuple[str | None, str | None]:
    """(torch's version, the CUDA version it was built for or None for a CPU build);
    (None, None) when torch is not installed. torch itself is not imported."""
    try:
        version: str | None = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None, None
    try:
        spec = importlib.util.find_spec("torch")  # finds the package without running it
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return version, None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return version, None
    full = _read(text, "__version__")
    return full or version, _read(text, "cuda")


def _read(text: str, name: str) -> str | None:
    match = re.search(_ASSIGN.format(name=re.escape(name)), text, re.MULTILINE)
    return (match.group(1) or match.group(2) or None) if match else None


def nvidia_driver() -> tuple[str | None, str | None, int]:
    """(driver version, the newest CUDA it supports, GPU count) through NVML; (None, None, 0)
    when there is no NVIDIA driver (or NVML fails)."""
    try:
        import pynvml
    except ImportError:
        return None, None, 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None, None, 0
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12040 for CUDA 12.4
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:
        return None, None, 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    return driver, f"{cuda // 1000}.{cuda % 1000 // 10}", int(count)


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def wheel_index(driver_cuda: str | None) -> str | None:
    """The newest PyTorch wheel index whose CUDA the driver supports; None if none does."""
    if driver_cuda is None:
        return f"{INDEX}cpu"
    fitting = [c for c in PYTORCH_CUDA_WHEELS if _major_minor(c) <= _major_minor(driver_cuda)]
    return f"{INDEX}cu{fitting[-1].replace('.', '')}" if fitting else None


def fit_warning(torch_version: str | None, torch_cuda: str | None, driver_version: str | None,
                driver_cuda: str | None, gpus: int) -> str | None:
    """One plain line when this torch and this driver do not fit, else None: torch missing,
    a CUDA build newer than the driver supports, a CUDA build with no driver, or a CPU build
    on a box with NVIDIA GPUs. Each says what to install."""
    if torch_version is None:
        return "torch is not installed: install trialdeck's dependencies (pip install -e .)"
    index = wheel_index(driver_cuda)
    install = f"pip install torch torchvision --index-url {index}" if index else None
    if torch_cuda is not None and driver_cuda is None:
        return (f"torch {torch_version} is a CUDA {torch_cuda} build, but no NVIDIA driver answers here: runs train "
                f"on the CPU (a CPU build is far smaller: {install})")
    if torch_cuda is not None and driver_cuda is not None and _major_minor(torch_cuda) > _major_minor(driver_cuda):
        fix = f"{install}, or update the driver" if install else "update the driver"
        return (f"torch {torch_version} is built for CUDA {torch_cuda}, but NVIDIA driver {driver_version} supports "
                f"CUDA up to {driver_cuda}: CUDA runs will fail; {fix}")
    if torch_cuda is None and gpus > 0:
        fix = install or "update the NVIDIA driver, then install a CUDA build of torch"
        return (f"torch {torch_version} is a CPU build, but this box has {gpus} NVIDIA GPU(s) (driver {driver_version}, "
                f"CUDA {driver_cuda}): runs train on the CPU; {fix}")
    return None


def probe() -> dict[str, Any]:
    """The fields `engine status` shows (and `--json` carries)."""
    torch_version, torch_cuda = torch_build()
    driver_version, driver_cuda, gpus = nvidia_driver()
    return {"torch_version": torch_version, "torch_cuda": torch_cuda, "driver_version": driver_version,
            "driver_cuda": driver_cuda, "gpus": gpus,
            "cuda_warning": fit_warning(torch_version, torch_cuda, driver_version, driver_cuda, gpus)}
