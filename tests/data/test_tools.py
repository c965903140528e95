"""The command-line wrappers: exit codes through tools/*.py, and a light ``import mtkd.data``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_check_dataset_tool_exit_codes(shapes_copy, tmp_path):
    assert _run("tools/check_dataset.py", str(shapes_copy)).returncode == 0
    (shapes_copy.parent / "labels/val/000001.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    r = _run("tools/check_dataset.py", str(shapes_copy))
    assert r.returncode == 1 and "000001.txt:1: class id 7" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: yolo_mask\ntrain: train\n")
    r = _run("tools/check_dataset.py", str(bad))
    assert (
        r.returncode == 2 and f"{bad}: field 'det_names': missing" in r.stderr and "Traceback" not in r.stderr
    )


def test_importing_the_package_and_the_checker_stays_light():
    code = (
        "import sys, mtkd.data, mtkd.data.check, mtkd.data.shapes; "
        "assert 'torch' not in sys.modules and 'albumentations' not in sys.modules, 'heavy import'; "
        "from mtkd.data import load_data_yaml"
    )
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr
