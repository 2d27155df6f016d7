"""What a training run writes as it goes: metrics.jsonl (a row per step), eval_curve.jsonl (the learning
curve), TensorBoard event files when the ``tensorboard`` package is installed, and their rollback on resume."""
from __future__ import annotations

import json
import time
from pathlib import Path

from t5vae import files

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "eval_curve.jsonl"


class TensorBoard:
    """Scalars as TensorBoard event files in ``run_dir/tensorboard`` when the ``tensorboard`` package is
    installed (its own event writer: no TensorFlow needed); :meth:`open` returns None otherwise."""

    def __init__(self, logdir: Path):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer, self._event, self._summary = EventFileWriter(str(logdir)), Event, Summary

    @classmethod
    def open(cls, run_dir: Path) -> "TensorBoard | None":
        import importlib.util

        return cls(run_dir / "tensorboard") if importlib.util.find_spec("tensorboard") else None

    def write(self, step: int, metrics: dict, group: str = "train") -> None:
        values = [self._summary.Value(tag=f"{group}/{k}", simple_value=float(v)) for k, v in metrics.items()]
        self._writer.add_event(self._event(wall_time=time.time(), step=step, summary=self._summary(value=values)))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class StepBar:
    """The training progress bar, counting steps, whose total is the step the run will actually stop at: with
    a time budget (``max_minutes``) that is, once the pace is known, the smaller of ``steps`` and the steps
    that fit in the budget left at the current rate, so the bar ends at 100 % when the run ends and its
    "remaining" is the budget's, not the time ``steps`` would take."""

    def __init__(self, steps: int, initial: int, max_minutes: float | None, t0: float):
        from tqdm.auto import tqdm

        self.steps, self.budget, self.t0 = steps, None if max_minutes is None else 60 * max_minutes, t0
        self._bar = tqdm(total=steps, initial=initial, desc="train", dynamic_ncols=True)
        self.write, self.set_postfix = self._bar.write, self._bar.set_postfix

    def update(self, step: int) -> None:
        """Step ``step`` is done."""
        rate = self._bar.format_dict.get("rate")  # tqdm's smoothed steps/s
        if self.budget is not None and rate and step % 10 == 0:
            left = self.budget - (time.time() - self.t0)
            end = min(self.steps, step + max(0, int(rate * left)))
            if end != self._bar.total:
                self._bar.total = max(end, step)
                self._bar.set_description("train" if end == self.steps else
                                          f"train ({self.budget / 60:g} min budget)", refresh=False)
        self._bar.update(1)

    @property
    def total(self) -> int:
        return self._bar.total

    def close(self) -> None:
        if self.budget is not None and time.time() - self.t0 >= self.budget:  # stopped by the budget: done
            self._bar.total = self._bar.n
            self._bar.refresh()
        self._bar.close()


def resume_logs(run_dir: Path, step: int, write: bool) -> float:
    """The training time recorded at the restored ``step`` in metrics.jsonl (so a resumed run's time budget
    continues rather than starting over); with ``write``, the rows past it are dropped from metrics.jsonl
    and eval_curve.jsonl (those steps run again)."""
    if write:
        _drop_rows_after(run_dir / CURVE_FILE, step)
    return _drop_rows_after(run_dir / METRICS_FILE, step, write)


def _drop_rows_after(path: Path, step: int, write: bool = True) -> float:
    """Keep the JSON-lines rows of ``path`` up to ``step`` -> the last kept row's "time". The file is replaced
    atomically, so a process reading it meanwhile sees the same rows up to ``step`` either way."""
    if not path.is_file():
        return 0.0
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if row.get("step", step + 1) <= step:
            rows.append(row)
    if write:
        with files.atomic_file(path, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    return float(rows[-1].get("time", 0.0)) if rows else 0.0
