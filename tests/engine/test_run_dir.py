"""The run folder under faults: kills between writes, failing evaluation, two runs at once, foreign folders, bad
names, stale temp files, a full disk, malformed training states, unwritable outputs."""

from __future__ import annotations

import csv
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtkd.checkpoint import load_checkpoint, save_checkpoint
from mtkd.cli import run_command
from mtkd.config import load_config
from mtkd.engine import state as state_mod
from mtkd.engine.hooks import Evaluation, HookBase
from mtkd.engine.logger import ResultsCSV
from mtkd.engine.setup import RunLock
from mtkd.engine.trainer import Trainer
from mtkd.errors import CheckpointError, ConfigError, MtkdError, OutputError

ROOT = Path(__file__).resolve().parents[2]


class Killed(BaseException):
    """Stands in for a kill -9: nothing after the raise point runs, no handler saves anything."""


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _train(overrides, hooks=()):
    return Trainer(load_config(None, overrides), hooks=hooks).fit()


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """``mtkd train`` with a config file that sets nothing (the overrides say it all, as in ``_train``)."""
    blank = tmp_path_factory.mktemp("cfg") / "blank.yaml"
    blank.write_text("seed: 3\n")
    return lambda argv: run_command("train", [str(blank), *argv])


def _no_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def _same_weights(a: Path, b: Path) -> None:
    ca, cb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for k, v in ca["model"]["state_dict"].items():
        assert torch.equal(v, cb["model"]["state_dict"][k]), k


def _one_line_error(capsys, *needles):
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln or "Traceback" in ln]
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


# ---------------------------------------------------------------- 1. kills between the end-of-epoch writes
@pytest.fixture
def two_epoch_ref(base_overrides):
    """An uninterrupted 2-epoch run that evaluates after each epoch (the reference)."""
    common = [*base_overrides, "epochs=2", "eval_every=1", "lr=0.01"]
    return common, _train([*common, "name=ref"])


def _kill_on_save(monkeypatch, name: str, epoch: int, nth: int = 1):
    """Die right after the ``nth`` successful write of ``weights/name`` holding ``epoch`` finished epochs."""
    real, seen = state_mod.save_checkpoint, []  # every checkpoint file is written through mtkd.engine.state

    def save(ckpt, path):
        out = real(ckpt, path)
        if Path(path).name == name and ckpt["train"]["epoch"] == epoch:
            seen.append(path)
            if len(seen) == nth:
                raise Killed
        return out

    monkeypatch.setattr(state_mod, "save_checkpoint", save)


@pytest.mark.parametrize(
    ("name", "nth"),
    [("last.pt", 1), ("best.pt", 1), ("last.pt", 2)],
    ids=["after-last-before-eval", "after-best-before-last", "after-last-before-csv"],
)
def test_kill_between_epoch_writes_resumes_to_the_same_run(
    two_epoch_ref, monkeypatch, capsys, cli, name, nth
):
    """A kill at any point between last.pt, best.pt and results.csv: the resumed run has best.pt, every row of
    the finished epochs, and bitwise the weights of the uninterrupted run; "done" names only existing files."""
    common, ref = two_epoch_ref
    with monkeypatch.context() as m:
        _kill_on_save(m, name, epoch=1, nth=nth)
        with pytest.raises(Killed):
            _train([*common, "name=cut"])
    cut = ref.parent / "cut"
    assert load_checkpoint(cut / "weights" / "last.pt")["train"]["epoch"] == 1
    assert cli([*common, "name=cut", "resume=true"]) == 0
    assert (cut / "weights" / "best.pt").is_file()
    assert _no_time(_rows(cut / "results.csv")) == _no_time(_rows(ref / "results.csv"))
    assert [r["epoch"] for r in _rows(cut / "results.csv")] == ["1", "2"]
    assert (
        _rows(cut / "results.csv")[0]["fitness"] != ""
    )  # epoch 1's evaluation happened (on resume if needed)
    for f in ("last.pt", "best.pt"):
        _same_weights(ref / "weights" / f, cut / "weights" / f)
    st = load_checkpoint(cut / "weights" / "last.pt")["train"]
    assert st["best_epoch"] in (1, 2) and not st["eval_pending"] and len(st["rows"]) == 2
    assert "done:" in capsys.readouterr().out


def test_failing_evaluation_keeps_the_epoch(two_epoch_ref, monkeypatch):
    """last.pt is written before the evaluation: an evaluation that fails loses no training, and the resume runs
    the pending evaluation first."""
    common, ref = two_epoch_ref
    real = Evaluation.evaluate

    def evaluate(self):
        if self.trainer.epoch == 1:
            raise MtkdError("evaluation failed (injected)")
        return real(self)

    with monkeypatch.context() as m:
        m.setattr(Evaluation, "evaluate", evaluate)
        with pytest.raises(MtkdError, match="injected"):
            _train([*common, "name=evalfail"])
    run = ref.parent / "evalfail"
    st = load_checkpoint(run / "weights" / "last.pt")["train"]
    assert (st["epoch"], st["eval_pending"]) == (2, True)
    assert [r["epoch"] for r in _rows(run / "results.csv")] == ["1", "2"]
    _train([*common, "name=evalfail", "resume=true"])
    assert _no_time(_rows(run / "results.csv")) == _no_time(_rows(ref / "results.csv"))
    for f in ("last.pt", "best.pt"):
        _same_weights(ref / "weights" / f, run / "weights" / f)
    assert not load_checkpoint(run / "weights" / "last.pt")["train"]["eval_pending"]
    with pytest.raises(ConfigError, match="already finished 2"):
        _train([*common, "name=evalfail", "resume=true"])


def test_missing_best_pt_is_recreated_on_resume(base_overrides, capsys):
    over = [*base_overrides, "name=nobest", "eval_every=1"]
    run = _train([*over, "epochs=1"])
    best = load_checkpoint(run / "weights" / "best.pt")
    (run / "weights" / "best.pt").unlink()  # e.g. killed by the old code between last.pt and best.pt
    (run / "results.csv").unlink()
    trainer = Trainer(load_config(None, [*over, "epochs=2", "resume=true"]))
    trainer.setup()
    trainer._release_lock()
    assert "re-created" in capsys.readouterr().out
    again = load_checkpoint(run / "weights" / "best.pt")
    assert again["train"]["best_epoch"] == 1 and again["metrics"] == best["metrics"]
    for k, v in best["model"]["state_dict"].items():
        assert torch.equal(v, again["model"]["state_dict"][k])
    assert [r["epoch"] for r in _rows(run / "results.csv")] == ["1"]  # rewritten from last.pt


def test_done_names_only_existing_files(monkeypatch, tmp_path, capsys):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "last.pt").write_bytes(b"x")
    monkeypatch.setattr(Trainer, "fit", lambda self: tmp_path)
    assert run_command("train", [str(ROOT / "configs" / "shapes_student.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"done: {tmp_path} (weights/last.pt)" in out and "best.pt" not in out


# ---------------------------------------------------------------- 2. one run per folder
class _StartSecondRun(HookBase):
    def __init__(self, cli, argv: list[str]) -> None:
        self.cli, self.argv, self.code = cli, argv, None

    def before_train(self) -> None:
        self.code = self.cli(self.argv)


def test_second_run_into_the_same_folder_is_refused(base_overrides, capsys, cli):
    over = [*base_overrides, "name=busy", "epochs=1", "batch=4"]
    hook = _StartSecondRun(cli, [*over, "exist_ok=true"])
    run = _train(over, hooks=[hook])
    assert hook.code == 2
    line = _one_line_error(capsys, str(run), "in use by another training run")
    assert "name:" in line
    assert [r["epoch"] for r in _rows(run / "results.csv")] == ["1"]
    assert not (run / ".lock").exists()  # released at the end of the run
    assert load_checkpoint(run / "weights" / "last.pt")["train"]["epoch"] == 1


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    run = tmp_path / "runs" / "x"
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from mtkd.engine.setup import RunLock; "
        f"lock = RunLock.acquire({str(run)!r}); print('locked', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="in use by another training run"):
            RunLock.acquire(run)
    finally:
        proc.kill()  # SIGKILL: no clean-up code runs
        proc.wait()
    assert (run / ".lock").exists()  # the file stays, the lock does not
    lock = RunLock.acquire(run)
    lock.release()
    assert not (run / ".lock").exists()


def test_failed_setup_releases_the_lock_and_leaves_no_folder(base_overrides, tmp_path):
    with pytest.raises(MtkdError, match="nope.yaml"):
        _train([*base_overrides, "name=bad", "epochs=1", f"data={tmp_path / 'nope.yaml'}"])
    assert not (tmp_path / "runs").exists()  # the folders the lock created are gone again


# ---------------------------------------------------------------- 3. folders of other runs
def test_folder_without_last_pt_is_refused_unless_exist_ok(base_overrides, tmp_path):
    run = tmp_path / "runs" / "old"
    (run / "weights").mkdir(parents=True)
    for f in ("config.yaml", "results.csv", "weights/best.pt"):
        (run / f).write_text(f"old {f}")
    with pytest.raises(
        ConfigError, match=r"run dir .*old is not empty \(config\.yaml, results\.csv, weights/best"
    ):
        _train([*base_overrides, "name=old", "epochs=1", "batch=4"])
    for f in ("config.yaml", "results.csv", "weights/best.pt"):
        assert (run / f).read_text() == f"old {f}"  # untouched
    _train([*base_overrides, "name=old", "epochs=1", "batch=4", "exist_ok=true"])
    assert load_checkpoint(run / "weights" / "best.pt")["train"]["epoch"] == 1
    assert [r["epoch"] for r in _rows(run / "results.csv")] == ["1"]


def test_existing_empty_folder_is_fine(base_overrides, tmp_path):
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    run = _train([*base_overrides, "name=empty", "epochs=1", "batch=4"])
    assert (run / "weights" / "last.pt").is_file()


# ---------------------------------------------------------------- 4. names that leave project
@pytest.mark.parametrize("name", ["../../x", "../x", "a/../../x", "ABS", ".", "a/.."])
def test_name_outside_project_is_refused(base_overrides, tmp_path, capsys, cli, name):
    name = str(tmp_path / "abs") if name == "ABS" else name  # an absolute path outside project
    code = cli([*base_overrides, f"name={name}", "epochs=1"])
    assert code == 2
    _one_line_error(capsys, "name:", repr(name))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even project was created
    assert not (tmp_path.parent / "x").exists()


# ---------------------------------------------------------------- 5. temp files of a killed run
def test_stale_temp_files_are_removed_on_the_next_start(base_overrides, capsys):
    over = [*base_overrides, "name=tmps", "batch=4"]
    run = _train([*over, "epochs=1"])
    stale = [
        run / "weights" / ".last.pt.k9x2ab.tmp",
        run / "weights" / ".best.pt.zz.tmp",
        run / ".results.csv.q1.tmp",
        run / ".config.yaml.q2.tmp",
    ]
    for p in stale:
        p.write_bytes(b"")
    _train([*over, "epochs=2", "resume=true"])
    assert not any(p.exists() for p in stale)
    assert "removed 4 temp file(s)" in capsys.readouterr().out
    # a folder holding nothing but a killed run's temp files counts as empty
    fresh = run.parent / "fresh"
    (fresh / "weights").mkdir(parents=True)
    (fresh / "weights" / ".last.pt.abc.tmp").write_bytes(b"")
    _train([*base_overrides, "name=fresh", "batch=4", "epochs=1"])
    assert not (fresh / "weights" / ".last.pt.abc.tmp").exists()


# ---------------------------------------------------------------- 6. full disk
def test_disk_full_during_checkpoint_is_one_line_and_keeps_last_pt(base_overrides, tmp_path):
    over = [*base_overrides, "name=full", "batch=4"]
    run = _train([*over, "epochs=1"])
    before = (run / "weights" / "last.pt").read_bytes()
    limit = len(before) // 2  # config.yaml and results.csv fit, a checkpoint does not

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    blank = tmp_path / "blank.yaml"
    blank.write_text("seed: 3\n")
    res = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train.py"), str(blank), *over, "epochs=2", "resume=true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_files,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    err = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "last.pt" in err[0] and "file too large" in err[0], err
    assert (run / "weights" / "last.pt").read_bytes() == before
    assert not [p for p in run.rglob("*.tmp")]


def test_results_csv_write_error_is_output_error(tmp_path, monkeypatch):
    import mtkd.utils.atomic as atomic

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(
        OutputError, match=r"results\.csv: cannot write the results CSV \(no space left on device\)"
    ):
        ResultsCSV(tmp_path / "results.csv").append({"epoch": 1})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 7. malformed training states
@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    """A 1-epoch run (resumable to epochs=2) and its overrides."""
    tmp = tmp_path_factory.mktemp("malformed")
    over = [
        f"data={tiny_data}",
        "model=yolo_mt_n",
        "imgsz=64",
        "batch=4",
        "workers=0",
        "device=cpu",
        f"project={tmp / 'runs'}",
        "eval_every=1000",
        "tensorboard=false",
        "seed=3",
    ]
    torch.set_num_threads(2)
    return over, _train([*over, "name=base", "epochs=1"])


def _del(d, k):
    del d[k]


def _shrink_first_param(sd):
    k = next(k for k, v in sd.items() if v.ndim > 1)
    sd[k] = sd[k][:1]


def _bad_optimizer_state(opt):
    st = next(s for s in opt["state"].values() if "exp_avg" in s)
    st["exp_avg"] = torch.zeros(3, 3, 3)


MUTATIONS = {
    "epoch-not-int": (lambda t: t.__setitem__("epoch", "1"), "train.epoch"),
    "epoch-float": (lambda t: t.__setitem__("epoch", 1.0), "train.epoch"),
    "step-negative": (lambda t: t.__setitem__("step", -1), "train.step"),
    "step-too-large": (lambda t: t.__setitem__("step", 99), "train.step"),
    "optimizer-groups": (lambda t: t["optimizer"]["param_groups"].pop(), "train.optimizer"),
    "optimizer-group-size": (lambda t: t["optimizer"]["param_groups"][0]["params"].pop(), "train.optimizer"),
    "optimizer-state-shape": (lambda t: _bad_optimizer_state(t["optimizer"]), "train.optimizer"),
    "optimizer-lr-type": (
        lambda t: t["optimizer"]["param_groups"][0].__setitem__("lr", "fast"),
        "train.optimizer",
    ),
    "rng-wrong-type": (lambda t: t["rng"].__setitem__("torch", [1, 2, 3]), "train.rng"),
    "rng-not-dict": (lambda t: t.__setitem__("rng", "seed"), "train.rng"),
    "model-key-missing": (lambda t: t["model"].popitem(), "train.model"),
    "model-key-extra": (lambda t: t["model"].__setitem__("extra.weight", torch.zeros(1)), "train.model"),
    "model-shape": (lambda t: _shrink_first_param(t["model"]), "train.model"),
    "ema-missing": (lambda t: t.__setitem__("ema", None), "train.ema"),
    "ema-shape": (lambda t: _shrink_first_param(t["ema"]["state_dict"]), "train.ema"),
    "scheduler-last-epoch": (lambda t: t["scheduler"].__setitem__("last_epoch", "2"), "train.scheduler"),
    "scheduler-missing": (lambda t: _del(t, "scheduler"), "train.scheduler"),
    "meters-type": (lambda t: t.__setitem__("meters", {"loss": "high"}), "train.meters"),
    "rows-type": (lambda t: t.__setitem__("rows", "1,2,3"), "train.rows"),
    "best-fitness-type": (lambda t: t.__setitem__("best_fitness", "good"), "train.best_fitness"),
    "world-size-type": (lambda t: t.__setitem__("world_size", "two"), "train.world_size"),
}


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_malformed_train_state_is_one_line(finished_run, tmp_path, capsys, cli, case):
    over, base = finished_run
    run = tmp_path / "runs" / "m"
    shutil.copytree(base, run)
    path = run / "weights" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    mutate, field = MUTATIONS[case]
    mutate(ckpt["train"])
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "mtkd_version")}, path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code = cli([*over, f"project={tmp_path / 'runs'}", "name=m", "epochs=2", "resume=true"])
    assert code == 2
    line = _one_line_error(capsys, str(path), field)
    assert "CheckpointError" not in line
    assert {
        p: p.read_bytes() for p in run.rglob("*") if p.is_file()
    } == before  # nothing the user had is lost


def test_train_state_without_optimizer_is_refused(finished_run, tmp_path):
    over, base = finished_run
    run = tmp_path / "runs" / "m"
    shutil.copytree(base, run)
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    ckpt["train"] = [1, 2]
    save_checkpoint({k: v for k, v in ckpt.items() if k != "format"}, run / "weights" / "last.pt")
    with pytest.raises(ConfigError, match="has no training state"):
        _train([*over, f"project={tmp_path / 'runs'}", "name=m", "epochs=2", "resume=true"])


def test_config_not_a_dict_is_checkpoint_error(finished_run, tmp_path):
    over, base = finished_run
    run = tmp_path / "runs" / "m"
    shutil.copytree(base, run)
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    ckpt["config"] = "yaml"
    save_checkpoint({k: v for k, v in ckpt.items() if k != "format"}, run / "weights" / "last.pt")
    with pytest.raises(CheckpointError, match="field 'config'"):
        _train([*over, f"project={tmp_path / 'runs'}", "name=m", "epochs=2", "resume=true"])


# ---------------------------------------------------------------- 8. unwritable output folder
def test_project_under_a_file_is_one_line(base_overrides, tmp_path, capsys, cli):
    (tmp_path / "file").write_text("not a folder")
    assert cli([*base_overrides, f"project={tmp_path / 'file' / 'runs'}", "epochs=1"]) == 2
    _one_line_error(capsys, "cannot create the run folder", str(tmp_path / "file" / "runs"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_project_is_one_line(base_overrides, tmp_path, capsys, cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert cli([*base_overrides, f"project={ro / 'runs'}", "epochs=1"]) == 2
        _one_line_error(capsys, "permission denied", str(ro / "runs"))
        run = tmp_path / "runs" / "done"
        _train([*base_overrides, "name=done", "epochs=1", "batch=4"])
        run.chmod(0o500)  # resume into a run folder that became read-only
        try:
            assert cli([*base_overrides, "name=done", "epochs=2", "batch=4", "resume=true"]) == 2
            _one_line_error(capsys, "permission denied", str(run))
        finally:
            run.chmod(0o755)
    finally:
        ro.chmod(0o755)


def test_permission_denied_is_one_line_also_as_root(base_overrides, tmp_path, capsys, cli, monkeypatch):
    """The chmod test above, with the refusals injected so it runs as root too: the project cannot be created,
    and an existing run folder cannot be written (the lock file cannot be opened)."""
    real_mkdir, real_open = Path.mkdir, os.open
    denied = tmp_path / "denied"

    def mkdir(self, *a, **k):
        if self == denied or denied in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    def open_(path, *a, **k):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", mkdir)
        assert cli([*base_overrides, f"project={denied / 'runs'}", "epochs=1"]) == 2
    _one_line_error(capsys, "cannot create the run folder (permission denied)", str(denied / "runs"))
    run = _train([*base_overrides, "name=done", "epochs=1", "batch=4"])
    capsys.readouterr()
    before = (run / "weights" / "last.pt").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(os, "open", open_)
        assert cli([*base_overrides, "name=done", "epochs=2", "batch=4", "resume=true"]) == 2
    _one_line_error(capsys, "cannot write into the run folder (permission denied)", str(run))
    assert (run / "weights" / "last.pt").read_bytes() == before
