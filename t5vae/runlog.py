"""What a training run writes as it goes: metrics.jsonl (a row per step), eval_curve.jsonl (the learning
curve), TensorBoard event files when the ``tensorboard`` package is installed, and their rollback on resume."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from t5vae import files
from t5vae.rundir import CURVE_FILE, METRICS_FILE


class TensorBoard:
    """Scalars as TensorBoard event files in ``run_dir/tensorboard`` when the ``tensorboard`` package is
    installed; :meth:`open` returns None otherwise. The records go through tensorboard's protos and record
    framing onto a plain file: its EventFileWriter opens files through ``tf.io.gfile``, which imports
    TensorFlow whenever it is installed (seconds of start-up and oneDNN log lines before step 1)."""

    def __init__(self, logdir: Path):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}"
        self._writer, self._event, self._summary = RecordWriter(open(logdir / name, "ab")), Event, Summary
        self._writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    @classmethod
    def open(cls, run_dir: Path) -> "TensorBoard | None":
        import importlib.util

        return cls(run_dir / "tensorboard") if importlib.util.find_spec("tensorboard") else None

    def write(self, step: int, metrics: dict, group: str = "train") -> None:
        values = [self._summary.Value(tag=f"{group}/{k}", simple_value=float(v)) for k, v in metrics.items()]
        event = self._event(wall_time=time.time(), step=step, summary=self._summary(value=values))
        self._writer.write(event.SerializeToString())

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
                self._bar.set_description(
                    "train" if end == self.steps else f"train ({self.budget / 60:g} min budget)",
                    refresh=False,
                )
        self._bar.update(1)

    @property
    def total(self) -> int:
        return self._bar.total

    def close(self) -> None:
        if self.budget is not None and time.time() - self.t0 >= self.budget:  # stopped by the budget: done
            self._bar.total = self._bar.n
            self._bar.refresh()
        self._bar.close()


BAR_KEYS = ("loss", "ce", "mmd", "w", "token_acc", "seq_acc")  # what the progress bar shows of a step


class RunLog:
    """A run's metrics as training writes them: one JSON row per step in metrics.jsonl (and TensorBoard),
    the learning curve in eval_curve.jsonl, messages, and the progress bar. Only the chief process writes
    files and shows the bar; every process may call it."""

    def __init__(
        self,
        run_dir: Path,
        steps: int,
        step: int,
        log_every: int,
        max_minutes: float | None,
        t0: float,
        progress: bool,
        chief: bool,
        log=print,
    ):
        self.run_dir, self.steps, self.log_every, self.t0, self.chief = (
            Path(run_dir),
            steps,
            log_every,
            t0,
            chief,
        )
        self.bar = StepBar(steps, step, max_minutes, t0) if progress and chief else None
        self.log, self.say = log, self.bar.write if self.bar is not None else log
        self.metrics_file = open(self.run_dir / METRICS_FILE, "a") if chief else None
        self.tensorboard = TensorBoard.open(self.run_dir) if chief else None

    def step(self, n: int, metrics: dict) -> None:
        """Step ``n``'s metrics (floats): a row, a flush every ``log_every`` steps, the bar advanced."""
        if self.chief:
            self.metrics_file.write(
                json.dumps({"step": n, "time": round(time.time() - self.t0, 3), **metrics}) + "\n"
            )
            if self.tensorboard is not None:
                self.tensorboard.write(n, metrics)
        if n % self.log_every == 0 or n == self.steps:
            if self.chief:
                self.metrics_file.flush()
            if self.tensorboard is not None:
                self.tensorboard.flush()
            if self.bar is not None:
                self.bar.set_postfix(
                    {k: f"{metrics[k]:.3g}" for k in BAR_KEYS if k in metrics}, refresh=False
                )
        if self.bar is not None:
            self.bar.update(n)

    def curve(self, n: int, row: dict, seconds: float) -> None:
        """A learning-curve row of held-out metrics at step ``n`` that took ``seconds`` to compute."""
        if not self.chief:
            return
        with open(self.run_dir / CURVE_FILE, "a") as f:
            f.write(json.dumps({"step": n, "time": round(time.time() - seconds - self.t0, 3), **row}) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(n, row, "eval")
        self.say(f"step {n}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()) + f" ({seconds:.1f}s)")

    def close(self) -> None:
        for f in (self.metrics_file, self.tensorboard, self.bar):
            if f is not None:
                f.close()


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
