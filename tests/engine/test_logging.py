from __future__ import annotations

import csv

import torch

from pacx.engine import MetricLogger


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_csv_widens_and_resume_drops_rows_after_the_checkpoint(tmp_path):
    with MetricLogger(tmp_path, tensorboard=False) as log:
        log.log(1, {"loss": 1.0})
        log.log(2, {"loss": torch.tensor(0.5), "acc": 0.7})
        log.log(3, {"loss": 0.25})
    rows = _rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3"] and rows[0]["acc"] == "" and rows[1]["acc"] == "0.7"
    with MetricLogger(tmp_path, tensorboard=False, resume_step=2) as log:
        log.log(3, {"loss": 0.3})
    rows = [(r["step"], r["loss"]) for r in _rows(tmp_path / "metrics.csv")]
    assert rows == [("1", "1.0"), ("2", "0.5"), ("3", "0.3")]


def test_disabled_logger_writes_nothing(tmp_path):
    MetricLogger(tmp_path / "logs", enabled=False).log(1, {"loss": 1.0})
    assert not (tmp_path / "logs").exists()
