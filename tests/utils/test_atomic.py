"""The one atomic writer: the destination changes only when the whole write succeeded."""

from __future__ import annotations

import errno

import pytest

from mtkd.errors import OutputError
from mtkd.utils import atomic
from mtkd.utils.atomic import atomic_write, remove_stale_temps, write_text


def test_replaces_only_on_success_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:
        f.write("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["m.json"]


def test_file_system_errors_are_one_line_naming_the_path(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    write_text(path, "old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(
        OutputError, match=rf"^{path}: cannot write the metrics JSON \(no space left on device\)"
    ):
        write_text(path, "new", what="metrics JSON")
    assert path.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(OutputError, match="existing directory"):
        write_text(tmp_path, "x")


def test_stale_temps_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"")
    (tmp_path / ".best.pt.zz.tmp").write_bytes(b"")
    (tmp_path / "last.pt").write_bytes(b"keep")
    assert [p.name for p in remove_stale_temps(tmp_path, "last.pt")] == [".last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.pt.zz.tmp", "last.pt"]
    remove_stale_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
