"""Run logs (t5vae.runlog): metrics also go to TensorBoard, and a resume rolls metrics.jsonl and
eval_curve.jsonl back to the restored step (atomically, keeping the recorded training time)."""

import json

import numpy as np
from conftest import require

from t5vae import runlog


def test_metrics_also_go_to_tensorboard(run):
    require("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run["out"] / "tensorboard"))
    acc.Reload()
    rows = [json.loads(l) for l in (run["out"] / "metrics.jsonl").read_text().splitlines()]
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [r["step"] for r in rows]
    np.testing.assert_allclose([e.value for e in events], [r["loss"] for r in rows], rtol=1e-6)
    assert {"train/ce", "train/mmd", "train/w", "train/token_acc", "train/seq_acc"} <= set(
        acc.Tags()["scalars"]
    )
    assert [e.step for e in acc.Scalars("eval/interp_valid")] == [3, 6]


def test_resume_drops_the_rows_past_the_restored_step_and_returns_its_time(tmp_path):
    rows = [{"step": s, "time": 1.5 * s, "loss": 1.0 / s} for s in range(1, 8)]
    metrics = tmp_path / runlog.METRICS_FILE
    metrics.write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "ti'
    )  # cut short by a crash
    (tmp_path / runlog.CURVE_FILE).write_text(json.dumps({"step": 3}) + "\n" + json.dumps({"step": 6}) + "\n")
    before = metrics.read_text()
    assert runlog.resume_logs(tmp_path, 4, write=False) == 6.0  # another process's view: time only
    assert metrics.read_text() == before and len((tmp_path / runlog.CURVE_FILE).read_text().splitlines()) == 2
    assert runlog.resume_logs(tmp_path, 4, write=True) == 6.0
    assert [json.loads(r)["step"] for r in metrics.read_text().splitlines()] == [1, 2, 3, 4]
    assert [json.loads(r)["step"] for r in (tmp_path / runlog.CURVE_FILE).read_text().splitlines()] == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        runlog.CURVE_FILE,
        runlog.METRICS_FILE,
    ]  # no temp files
    assert runlog.resume_logs(tmp_path, 0, write=True) == 0.0 and metrics.read_text() == ""
    assert runlog.resume_logs(tmp_path / "nowhere", 5, write=True) == 0.0


def test_tensorboard_is_optional(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    assert runlog.TensorBoard.open(tmp_path) is None and not (tmp_path / "tensorboard").exists()
    monkeypatch.undo()
    require("tensorboard")
    tb = runlog.TensorBoard.open(tmp_path)
    tb.write(1, {"loss": np.float32(2.5)})
    tb.close()
    assert any((tmp_path / "tensorboard").iterdir())


def test_tensorboard_events_are_written_without_importing_tensorflow(tmp_path):
    """TensorFlow comes with the test extra; writing a run's events must not import it (seconds of start-up)."""
    import subprocess
    import sys

    require("tensorboard")
    require("tensorflow")  # the case at hand: installed, and still never imported
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code = (
        "import sys; from pathlib import Path; from t5vae import runlog; tb = runlog.TensorBoard.open(Path(sys.argv[1]));"
        " tb.write(3, {'loss': 2.5}); tb.write(4, {'loss': 1.5}, 'eval'); tb.close();"
        " print('tensorflow' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    assert "oneDNN" not in done.stderr
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(3, 2.5)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/loss")] == [(4, 1.5)]


def test_the_step_bar_ends_where_the_time_budget_ends():
    """With a budget that stops the run long before ``steps``, the bar's total becomes the steps that fit
    (its "remaining" is the budget's); without one it stays ``steps``."""
    import time

    from t5vae.runlog import StepBar

    budgeted = StepBar(100_000, 0, 0.02, time.time())  # 1.2 s of budget at ~200 steps/s: a few hundred steps
    free = StepBar(100_000, 0, None, time.time())
    for step in range(1, 101):
        time.sleep(0.005)
        budgeted.update(step)
        free.update(step)
    assert 100 <= budgeted.total < 2_000 and "min budget" in budgeted._bar.desc
    assert free.total == 100_000
    time.sleep(1.3)
    budgeted.close()
    assert budgeted.total == 100  # stopped by the budget: the bar reads 100 %
    free.close()
