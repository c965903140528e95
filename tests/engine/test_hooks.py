"""The built-in hooks' order (checkpoint before evaluation, best.pt before the last.pt update, user hooks last),
the resumed pending evaluation, and the task (what DDP wraps) vs. the trainer (no distillation in it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mtkd.config import load_config
from mtkd.engine import hooks as hooks_mod
from mtkd.engine import state as state_mod
from mtkd.engine.hooks import EarlyStop, EpochLog, Evaluation, HookBase, LastCheckpoint, ProgressBar
from mtkd.engine.logger import ResultsCSV
from mtkd.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


class _Record(HookBase):
    def __init__(self, events: list) -> None:
        self.events = events

    def after_epoch(self) -> None:
        self.events.append(("user", self.trainer.epoch + 1))


@pytest.fixture
def recorded(monkeypatch):
    """Every checkpoint write, results.csv write, evaluation and console line, in order."""
    events: list = []
    real_save, real_eval, real_replace = state_mod.save_checkpoint, Evaluation.evaluate, ResultsCSV.replace

    def save(ckpt, path):
        events.append(("save", Path(path).name, ckpt["train"]["epoch"], ckpt["train"].get("eval_pending")))
        return real_save(ckpt, path)

    def evaluate(self):
        events.append(("eval", self.trainer.epoch + 1))
        return real_eval(self)

    def replace(self, rows):
        events.append(("csv", len(rows), "fitness" in rows[-1]))
        return real_replace(self, rows)

    monkeypatch.setattr(state_mod, "save_checkpoint", save)
    monkeypatch.setattr(Evaluation, "evaluate", evaluate)
    monkeypatch.setattr(ResultsCSV, "replace", replace)
    monkeypatch.setattr(
        hooks_mod.log, "info", lambda msg, *a, **k: events.append(("print", msg.split(":")[0]))
    )
    return events


def test_default_hooks_order():
    kinds = [type(h) for h in Trainer(load_config(None, [])).hooks]
    assert kinds == [ProgressBar, LastCheckpoint, Evaluation, EpochLog, EarlyStop]
    user = _Record([])
    assert Trainer(load_config(None, []), hooks=[user]).hooks[-1] is user and user.trainer is not None


def test_epoch_end_order(base_overrides, recorded):
    """Per epoch: last.pt (eval pending) + csv → evaluation → best.pt → last.pt (done) + csv → console → user."""
    Trainer(
        load_config(
            None,
            [*base_overrides, "name=order", "epochs=2", "batch=4", "eval_every=1", "patience=1", "lr=0.0001"],
        ),
        hooks=[_Record(recorded)],
    ).fit()
    first = recorded[: recorded.index(("user", 1)) + 1]
    assert first == [
        ("save", "last.pt", 1, True),
        ("csv", 1, False),
        ("eval", 1),
        ("save", "best.pt", 1, None),
        ("save", "last.pt", 1, False),
        ("csv", 1, True),
        ("print", "epoch 1/2"),
        ("user", 1),
    ]
    second = recorded[len(first) :]
    if ("save", "best.pt", 2, None) in second:  # improved: best.pt right after the evaluation
        assert second.index(("save", "best.pt", 2, None)) == second.index(("eval", 2)) + 1
    if (
        "print",
        "early stop",
    ) in second:  # not improved (patience=1): after the console line, before user hooks
        assert second.index(("print", "early stop")) == second.index(("print", "epoch 2/2")) + 1
    assert [e for e in second if e not in (("save", "best.pt", 2, None), ("print", "early stop"))] == [
        ("save", "last.pt", 2, True),
        ("csv", 2, False),
        ("eval", 2),
        ("save", "last.pt", 2, False),
        ("csv", 2, True),
        ("print", "epoch 2/2"),
        ("user", 2),
    ]


def test_resumed_pending_evaluation_runs_only_resumed_epoch_hooks(base_overrides, recorded, monkeypatch):
    """A resume of a last.pt marked eval_pending re-runs the evaluation, its best.pt/last.pt/csv and console line
    without rewriting last.pt first; user hooks' after_epoch is not called for it."""
    over = [*base_overrides, "name=pending", "batch=4", "eval_every=1"]
    with monkeypatch.context() as m:
        m.setattr(Evaluation, "evaluate", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            Trainer(load_config(None, [*over, "epochs=1"])).fit()
    recorded.clear()
    Trainer(load_config(None, [*over, "epochs=1", "resume=true"]), hooks=[_Record(recorded)]).fit()
    assert [e for e in recorded if e[0] != "csv"] == [
        ("eval", 1),
        ("save", "best.pt", 1, None),
        ("save", "last.pt", 1, False),
        ("print", "epoch 1/1"),
    ]


def test_trainer_has_no_distillation():
    """Distillation lives in the task (mtkd.engine.task); the trainer never names the teacher's loss or connectors."""
    tree = ast.parse((ROOT / "mtkd" / "engine" / "trainer.py").read_text())
    for node in ast.walk(tree):  # drop docstrings; ast drops comments
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            node.body = body[1:] or [ast.Pass()]
    code = ast.unparse(tree).lower()
    for word in ("connector", "distill", "teacher", "plain_loss", "average_gradients", "feature"):
        assert word not in code, word
    run_step = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "run_step")
    assert run_step.end_lineno - run_step.lineno < 30 and not any(
        isinstance(n, ast.If) and "task" in ast.unparse(n.test) for n in ast.walk(run_step)
    )
