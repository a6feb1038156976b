"""CI runs the benchmark suite in quick mode so it never rots (no targets enforced here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_run_all_quick_produces_every_section(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "bench/run_all.py", "--quick", "--output", str(report)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    for section in ("trainer vs plain loop", "batched augmentation", "store and CLI start-up",
                    "engine per-run overhead", "`trialdeck tune` vs a plain", "TUI under streaming runs",
                    "ensemble trials vs one at a time", "trials per hour through the engine",
                    "engine CPU while a script run prints", "data past the device budget",
                    "any Optuna study at scale, and pruning by dominance", "a year of sweeps"):
        assert f"## {section}" in text, section
    assert "| error |" not in text
    assert "ratio" in text and "torch" in text
