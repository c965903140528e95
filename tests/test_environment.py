"""The newcomer's first run: a pinned environment and a silent library."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_installed_distribution_is_pinned():
    """What `make` installs with (-c constraints.txt) pins every distribution of this environment exactly."""
    pins = _pins()
    unpinned, differ = [], []
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if name == "mtkd":
            continue
        if name not in pins:
            unpinned.append(name)
        elif pins[name] != dist.version:
            differ.append(f"{name} {dist.version} (pinned {pins[name]})")
    assert not unpinned and not differ, f"run `make lock`: unpinned {unpinned}, different {differ}"
    assert "torch" in pins and "torchvision" in pins


def test_makefile_installs_with_the_lock():
    text = (ROOT / "Makefile").read_text()
    assert "install -q -c constraints.txt" in text


def test_library_imports_and_builds_are_silent(tmp_path):
    """No Ultralytics settings banner or INFO lines in library use (fresh settings dir, YOLO_VERBOSE unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "ultralytics")
    env["YOLO_OFFLINE"] = "1"  # no DNS probe on this offline machine; it does not change what is printed
    code = (
        "from mtkd.models import build_model\n"
        "import mtkd.models.adapters.ultralytics\n"
        "build_model({'adapter': 'ultralytics', 'model': 'yolov8n.yaml'}, nc_det=3, nc_seg=2)\n"
        "build_model('yolo_mt_n', nc_det=3, nc_seg=2)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == "", res.stdout + res.stderr
    assert (tmp_path / "ultralytics").is_dir()  # Ultralytics did create its settings, quietly


def test_an_unexpected_file_system_error_is_one_line(monkeypatch, capsys):
    """A command's OSError that no code path anticipated still prints one line naming the path (exit 2)."""
    import mtkd.cli as cli

    def boom(argv):
        raise PermissionError(13, "Permission denied", "/some/where/file.json")

    monkeypatch.setattr(
        cli.importlib, "import_module", lambda name: type("M", (), {"main": staticmethod(boom)})
    )
    assert cli.run_command("eval", []) == 2
    assert capsys.readouterr().err.strip() == "mtkd eval: error: /some/where/file.json: permission denied"
