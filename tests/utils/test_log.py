"""Library messages go through ``mtkd`` loggers: printed by commands on rank 0 only, silent for other ranks."""

from __future__ import annotations

import logging

from mtkd.utils.log import get_logger, setup_cli_logging


def test_cli_logging_prints_on_rank_0_only(capsys, monkeypatch):
    setup_cli_logging()
    setup_cli_logging()  # idempotent: one handler, one line per message
    log = get_logger("mtkd.engine.test")
    monkeypatch.setenv("RANK", "0")
    log.info("epoch 1/2: loss 1.0")
    monkeypatch.setenv("RANK", "1")
    log.info("from rank 1")
    assert capsys.readouterr().out == "epoch 1/2: loss 1.0\n"
    assert get_logger("engine.x").name == "mtkd.engine.x" and logging.getLogger("mtkd").propagate is False
