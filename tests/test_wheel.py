"""The built wheel works on its own: installed into a fresh virtualenv, run from an empty directory.

The wheel is built from a copy of the sources (a stale ``build/`` folder of the checkout cannot leak into it) and
installed with ``--no-deps`` into a new venv. The dependencies (torch and the rest: gigabytes) and the MiniLM
package come from this interpreter's site-packages through a ``.pth`` line; such a folder is appended to
``sys.path`` after the venv's own site-packages and its ``.pth`` files are not processed, so the editable install of
the checkout there cannot shadow the wheel. The test asserts that ``efficientft`` is imported from the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import efficientft
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 180) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
         str(src)], tmp, env)
    (wheel,) = (tmp / "dist").glob("efficientft-*.whl")
    venv = tmp / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    _sh([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], tmp, env)
    site = Path(_sh([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).strip())
    (site / "_eft_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_wheel_in_a_fresh_venv_from_an_empty_directory(venv, tmp_path, glue_dir):
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EFT_STORE")}
    env.update(PYTHONNOUSERSITE="1", EFT_DATA_DIR=str(glue_dir), HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}:{env['PATH']}")
    eft = str(venv / "bin" / "eft")
    where = _sh([str(venv / "bin" / "python"), "-c", "import efficientft, importlib.metadata as m; "
                 "print(efficientft.__file__); print(m.version('efficientft'))"], work, env).split()
    assert Path(where[0]).is_relative_to(venv) and not Path(where[0]).is_relative_to(ROOT), where
    assert where[1] == efficientft.__version__
    assert _sh([eft, "--version"], work, env).strip() == f"eft {efficientft.__version__}"
    assert "quick " in _sh([eft, "suites"], work, env)
    plan = _sh([eft, "sweep", "quick", "--dry-run", "--store", "s.sqlite"], work, env)
    assert "suite quick: 9 runs (9 new); 9 to run." in plan
    run = json.loads(_sh([eft, "run", "--task", "rte", "--method", "lora", "--steps", "1", "--batch-size", "8",
                          "--max-train", "16", "--max-eval", "16", "--max-length", "32", "--store", "s.sqlite",
                          "--json"], work, env))
    assert run["status"] == "done" and 0 <= run["scores"]["dev/accuracy"] <= 1
    report = _sh([eft, "report", "--store", "s.sqlite", "--out", "rep", "--format", "md,csv"], work, env)
    assert "RTE (Acc.)" in report and (work / "rep" / "report.md").is_file()
    _sh([eft, "export", "--store", "s.sqlite", "--out", "runs.csv"], work, env)
    import pandas as pd

    df = pd.read_csv(work / "runs.csv")
    assert list(df["run_key"]) == [run["run_key"]] and df["scores.dev/accuracy"][0] == run["scores"]["dev/accuracy"]
    written = {p.name for p in work.iterdir()} - {"s.sqlite-wal", "s.sqlite-shm"}
    assert written == {"rep", "runs.csv", "runs.curves.csv", "s.sqlite"}
