"""``mtkd study``: bad input is one ConfigError line; a tiny end-to-end study (teacher trained for 1 epoch, pruned
at ratio 0.3, 2 seeds x 1 epoch per arm) writes study.json and the reports; a second run re-runs nothing; a
folder with other settings is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mtkd.errors import ConfigError
from mtkd.study.cli import main, plan_from_args

REPO = Path(__file__).resolve().parents[2]
CONFIGS = [
    "--ft-config",
    str(REPO / "configs" / "shapes_student.yaml"),
    "--kd-config",
    str(REPO / "configs" / "shapes_distill.yaml"),
    "--teacher-config",
    str(REPO / "configs" / "shapes_teacher.yaml"),
]
FAST = ["imgsz=64", "batch=4", "workers=0", "tensorboard=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mtkd.data.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), n_train=4, n_val=2, size=64, seed=0)


def study_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data",
        str(data),
        "--out",
        str(out),
        "--teacher-epochs",
        "1",
        "--teacher-model",
        "yolo_mt_n",
        "--ratio",
        "0.3",
        "--seeds",
        "2",
        "--epochs",
        "1",
        *CONFIGS,
        *FAST,
        *extra,
    ]


def _one_line_error(argv: list[str], *fragments: str) -> str:
    with pytest.raises(ConfigError) as e:
        main(argv)
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg
    return msg


def _no_work(monkeypatch) -> None:
    """Any training, evaluation or pruning fails the test."""

    def fail(*a, **k):
        raise AssertionError("the study re-ran finished work")

    monkeypatch.setattr("mtkd.engine.trainer.Trainer", fail)
    monkeypatch.setattr("mtkd.eval.cli.run_eval", fail)
    monkeypatch.setattr("mtkd.demo._run", fail)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_one_config_error_line(data, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    out = tmp_path / "s"
    base = ["--out", str(out), *CONFIGS]
    _one_line_error(
        ["--data", str(tmp_path / "missing.yaml"), *base, "--teacher-epochs", "1", "--ratio", "0.3"],
        "--data",
        "not found",
    )
    ok = ["--data", str(data), *base, "--teacher-epochs", "1"]
    _one_line_error([*ok, "--student", str(data), "--ratio", "0.3"], "--student and --ratio")
    _one_line_error([*ok], "--student CKPT, --ratio R or --target-macs M")
    _one_line_error([*ok, "--ratio", "0.3", "--seeds", "1"], "at least 2 seeds")
    _one_line_error([*ok, "--ratio", "0.3", "--seed-list", "4"], "at least 2 seeds")
    _one_line_error([*ok, "--ratio", "0.3", "--seed-list", "1,1"], "distinct")
    _one_line_error([*ok, "--ratio", "1.5"], "--ratio")
    _one_line_error([*ok, "--ratio", "0.3", "epochs=3"], "--epochs")
    _one_line_error(["--data", str(data), *base, "--ratio", "0.3"], "--teacher-epochs")
    _one_line_error([*ok, "--teacher", str(data), "--ratio", "0.3"], "exactly one")
    assert not out.exists()  # nothing written


def test_arms_must_share_every_non_kd_setting(data, tmp_path, monkeypatch):
    from mtkd.config import load_config
    from mtkd.study.plan import check_same_recipe

    ft, kd = REPO / "configs" / "shapes_student.yaml", REPO / "configs" / "shapes_distill.yaml"
    check_same_recipe(load_config(ft), load_config(kd, ["temperature=2.0", "alpha_seg=0.9"]), ft, kd)
    with pytest.raises(ConfigError, match="'batch'"):
        check_same_recipe(load_config(ft), load_config(kd, ["batch=8"]), ft, kd)

    _no_work(monkeypatch)
    other = tmp_path / "kd_lr.yaml"
    other.write_text(f"base: {kd}\noptim:\n  lr: 0.005\n")
    out = tmp_path / "s"
    argv = study_argv(data, out)
    argv[argv.index("--kd-config") + 1] = str(other)
    _one_line_error(argv, "'optim.lr'", "0.001", "0.005")
    assert not (out / "settings.json").exists()


def test_val_split_and_empty_folder_required(data, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    no_val = tmp_path / "no_val.yaml"
    no_val.write_text(data.read_text().replace("val: val\n", "").replace("path: .", f"path: {data.parent}"))
    _one_line_error(study_argv(no_val, tmp_path / "a"), "no 'val' split")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    _one_line_error(study_argv(data, busy), "holds no study")


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def study(data, tmp_path_factory):
    """One tiny study, shared by the tests below: ``(out, argv, study.json dict, wall seconds)``."""
    import torch

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("study") / "s"
    argv = study_argv(data, out)
    t0 = time.perf_counter()
    assert main(argv) == 0
    wall = time.perf_counter() - t0
    print(f"\ntiny end-to-end study: {wall:.1f}s")
    return out, argv, json.loads((out / "study.json").read_text()), wall


@pytest.mark.slow
def test_end_to_end_study_json_and_reports(study):
    out, _, s, _ = study
    metrics = ("mAP50", "mAP50_95", "mIoU")
    assert s["split"] == "val" and s["seeds"] == [0, 1] and s["epochs"] == 1 and s["metrics"] == list(metrics)
    for arm in ("finetune", "distill"):
        a = s["arms"][arm]
        assert a["wall_s"] > 0 and len(a["wall_s_per_seed"]) == 2 and len(a["runs"]) == 2
        for m in metrics:
            assert len(a[m]["values"]) == 2 and all(0.0 <= v <= 1.0 for v in a[m]["values"])
            assert a[m]["mean"] == pytest.approx(sum(a[m]["values"]) / 2) and a[m]["std"] >= 0.0
        for seed in (0, 1):
            rec = json.loads((out / "metrics" / f"{arm}_seed{seed}.json").read_text())
            assert rec["data"]["split"] == "val" and rec["study"]["seed"] == seed
    for m in metrics:
        d = s["diff"][m]
        low, high = d["ci95"]
        assert low <= d["mean"] <= high and d["n"] == 2
        assert d["verdict"] in ("not distinguishable from noise", "distillation better", "fine-tuning better")
        assert m in s["gap_recovered"] and 0.0 <= s["teacher"][m] <= 1.0
    assert s["teacher"]["train_s"] > 0 and s["student"]["params"] < s["teacher"]["params"]
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for text in (html, md):
        assert "mAP50-95" in text and "95% interval" in text and "gap recovered" in text and "± " in text
        assert s["diff"]["mIoU"]["verdict"] in text


@pytest.mark.slow
def test_second_run_reruns_nothing(study, monkeypatch):
    out, argv, before, _ = study
    _no_work(monkeypatch)
    assert main(argv) == 0
    after = json.loads((out / "study.json").read_text())
    assert after["arms"] == before["arms"] and after["diff"] == before["diff"]


@pytest.mark.slow
def test_finished_training_without_metrics_is_only_evaluated(study, monkeypatch):
    out, argv, before, _ = study
    (out / "metrics" / "distill_seed1.json").unlink()
    monkeypatch.setattr("mtkd.engine.trainer.Trainer", lambda *a, **k: pytest.fail("trained again"))
    assert main(argv) == 0
    after = json.loads((out / "study.json").read_text())
    assert after["arms"]["distill"]["mIoU"]["values"] == before["arms"]["distill"]["mIoU"]["values"]


@pytest.mark.slow
def test_changed_settings_are_refused_and_more_seeds_allowed(study, monkeypatch):
    from mtkd.study.runner import prepare

    out, argv, _, _ = study
    _no_work(monkeypatch)
    epochs2 = list(argv)
    epochs2[epochs2.index("--epochs") + 1] = "2"
    _one_line_error(epochs2, "epochs=1", "epochs=2", str(out))
    _one_line_error([*argv, "lr=0.01"], "finetune.optim.lr")
    _one_line_error([*argv, "--eval-weights", "best"], "eval_weights")
    more = list(argv)
    more[more.index("--seeds") : more.index("--seeds") + 2] = ["--seed-list", "0,1,2"]
    prepare(plan_from_args(more))  # adding seeds keeps the study's settings


@pytest.mark.slow
def test_train_starts_fresh_resumes_or_skips(study, monkeypatch):
    from mtkd.study.plan import arm_config
    from mtkd.study.runner import train

    calls = []

    class Recorder:
        def __init__(self, cfg):
            calls.append(cfg)

        def fit(self):
            return calls[-1].run_dir

        def elapsed(self):
            return 1.5

    monkeypatch.setattr("mtkd.engine.trainer.Trainer", Recorder)
    _, argv, _, _ = study
    cfg = arm_config(plan_from_args(argv), "finetune", 0)
    assert train(cfg) > 0 and calls == []  # finished: kept
    assert train(cfg.replace(epochs=2)) == 1.5 and calls[-1].resume is True  # unfinished: resumed
    train(cfg.replace(name="fresh"))  # no last.pt: a fresh run that may overwrite a run without one
    assert calls[-1].resume is False and calls[-1].exist_ok is True


def test_settings_are_kept_once_results_exist(tmp_path):
    from mtkd.study.plan import check_settings

    out = tmp_path / "s"
    assert check_settings(out, {"epochs": 1, "lr": 0.1}) == {"epochs": 1, "lr": 0.1}
    assert check_settings(out, {"epochs": 2, "lr": 0.1})["epochs"] == 2  # nothing produced yet: replaced
    (out / "metrics").mkdir()
    (out / "metrics" / "teacher.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds a study run with epochs=2, but this command has epochs=3"):
        check_settings(out, {"epochs": 3, "lr": 0.1})
    assert check_settings(out, {"epochs": 2, "lr": 0.1})["epochs"] == 2


def test_cli_prints_one_line_and_exits_2(monkeypatch, capsys):
    from mtkd.cli import run_command

    assert run_command("study", ["--out", "x", "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mtkd study: error: --data: required"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--teacher-epochs" in capsys.readouterr().out
