"""One import name: the distribution installs `trialdeck` and nothing else, so a user's own
`engine.py`, `tui.py` or `experiments/` (DETR, DeiT, MAE and ConvNeXt all have an `engine.py`)
never shadows trialdeck's modules, nor is shadowed by them.

The wheel is built from a copy of the source tree (pip, no build isolation: the venv's
setuptools), then read as a zip: `top_level.txt` says `trialdeck`, every file lies under
`trialdeck/`, and every module and preset of the source tree is in it; the build warns about no
folder left out of `packages` (each folder is listed, the preset folders too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.deck import REPO

pytestmark = pytest.mark.slow


def _source_files() -> list[Path]:
    """The files a fresh clone would have (tracked, plus new files not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return [Path(line) for line in out.splitlines() if (REPO / line).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The wheel built from a copy of the source tree, and what the build printed on stderr."""
    src = tmp_path_factory.mktemp("src")
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    out = tmp_path_factory.mktemp("wheel")
    # -v: the build backend's own output (setuptools' warnings), which an older pip shows only then.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("trialdeck-*.whl")
    return path, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(built) -> zipfile.ZipFile:
    with zipfile.ZipFile(built[0]) as zf:
        yield zf


def test_the_build_warns_about_no_folder_left_out_of_the_packages(built):
    # setuptools' "Package would be ignored" (about 40 lines per folder) buries a real warning in CI's output.
    assert "would be ignored" not in built[1], built[1][:3000]


def test_every_source_folder_is_a_listed_package():
    """A new folder under engine/, tui/ or experiments/ goes into pyproject's `packages` list (one a
    line), or setuptools warns about it at every install (and a .py in it would be left out)."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"trialdeck." + rel.parent.as_posix().replace("/", ".") for rel in _source_files()
               if rel.parts[0] in ("engine", "tui", "experiments") and rel.suffix in (".py", ".toml", ".tcss")}
    assert not folders - listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(folders - listed)}"


def test_the_wheel_installs_one_top_level_name(wheel):
    names = wheel.namelist()
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["trialdeck"]
    strays = [n for n in names if not n.startswith(("trialdeck/", "trialdeck-"))]
    assert not strays, f"files outside trialdeck/ would land in site-packages: {strays[:10]}"


def test_every_module_preset_and_stylesheet_of_the_source_tree_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    wanted = [f"trialdeck/{rel.as_posix()}" for rel in _source_files()
              if rel.parts[0] in ("engine", "tui", "experiments") and rel.suffix in (".py", ".toml", ".tcss")]
    assert len(wanted) > 100
    missing = [n for n in wanted if n not in names]
    assert not missing, f"not in the wheel: {missing}"


def test_the_console_script_is_trialdeck_tui_cli_main(wheel):
    (entry,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry).decode()
    assert "trialdeck = trialdeck.tui.cli:main" in text


def test_a_project_with_its_own_engine_tui_and_experiments_trains_and_keeps_its_own_modules(home, tmp_path):
    project = tmp_path / "detr-like"
    (project / "experiments").mkdir(parents=True)
    for module in ("engine.py", "tui.py", "experiments/__init__.py"):
        (project / module).write_text(f'raise RuntimeError("the user\'s {module} was imported")\n'
                                      if module != "engine.py" else
                                      'MARK = "the user\'s engine"\n'
                                      'import os\n'
                                      'if os.environ.get("TRIALDECK_RUN_ID") or os.environ.get("TRIALDECK_HOME"):\n'
                                      '    raise RuntimeError("trialdeck imported the user\'s engine.py")\n')
    # `python -c` puts the current folder first on sys.path, as a user's own scripts have it: any
    # bare `import engine` (or tui, experiments) in trialdeck would now import the user's file.
    env = {**os.environ, "TRIALDECK_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", "from trialdeck.tui.cli import main; main()", "run", "seed/step-decay",
                           "--set", "train.epochs=2", "--wait", "--json", "--home", str(home)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert '"completed"' in done.stdout
    own = subprocess.run([sys.executable, "-c", "import engine; print(engine.MARK)"], cwd=project,
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert own.returncode == 0, own.stderr
    assert own.stdout.strip() == "the user's engine"
