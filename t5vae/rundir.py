"""The run directory: the name of each file in it, the corpus it trained on, who may write it, and whether
what is in it may be resumed.

- **Its files.** config.json (tv.Config), spiece.model and spiece.json (its piece count and hash, so a
  tokenizer swapped in from another run is refused at load), params/ (the final params) and checkpoints/<step>/
  (orbax, see t5vae.checkpoint), train_config.json, metrics.jsonl and eval_curve.jsonl (t5vae.runlog),
  eval.json and eval.md, aggregate_posterior.npz (read when present: t5vae.text fits it into the user's
  cache instead, since a reader never writes a run), and the two marks below.
- **Its corpus.** :func:`corpus` gives the lines the run trained on and held out, whichever pipeline read them.

- **One writer.** :func:`claim` takes an exclusive OS lock (``flock``) on ``RUN/.lock`` for the whole run. The
  lock dies with its process, so a run killed with ``kill -9`` never blocks the next one; a second writer is
  refused, naming the directory and the holder's PID (written into the lock file). On several hosts only
  process 0 takes it: it alone writes the run-level files.
- **Nothing half-started is reused.** A new run writes ``RUN/.incomplete`` before its config, tokenizer and
  train config, and removes it once its first checkpoint is committed. A directory that still has the mark
  and no committed checkpoint is the debris of a run that failed before it could be resumed (bad data, a
  kill, Ctrl-C): the next run clears it and starts over instead of silently reusing, say, its tokenizer.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from t5vae import checkpoint, data, files
from t5vae.checkpoint import (  # noqa: F401  (its files)
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    PARAMS_DIR,
    TOKENIZER_FILE,
    committed_steps,  # noqa: F401  (which checkpoints it holds)
)
from t5vae.config import _RUNTIME_FIELDS, Config
from t5vae.corpus import Corpus
from t5vae.names import corpus_language
from t5vae.train_config import TrainConfig

LOCK_FILE, INCOMPLETE_FILE = ".lock", ".incomplete"
TRAIN_CONFIG_FILE = "train_config.json"
METRICS_FILE, CURVE_FILE = "metrics.jsonl", "eval_curve.jsonl"
EVAL_NAME = "eval"  # eval.json and eval.md
AGGREGATE_FILE = "aggregate_posterior.npz"
TOKENIZER_RECORD = "spiece.json"


def _tokenizer_record(tokenizer_file: Path, pieces: int) -> dict:
    return {"pieces": pieces, "sha256": hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()}


def record_tokenizer(run_dir: str | os.PathLike, tok: data.Tokenizer) -> None:
    """Write spiece.json: the piece count and hash of the run's spiece.model, as it trains on it."""
    run_dir = Path(run_dir)
    files.write_json(run_dir / TOKENIZER_RECORD, _tokenizer_record(run_dir / TOKENIZER_FILE, tok.vocab_size))


def check_tokenizer(run_dir: str | os.PathLike, tok: data.Tokenizer) -> None:
    """A spiece.model that is not the one the run trained on (spiece.json records it) is a ValueError naming
    both piece counts. A run without the record (an export, an older run) is not checked."""
    run_dir = Path(run_dir)
    record = run_dir / TOKENIZER_RECORD
    if not record.is_file():
        return
    try:
        want = json.loads(record.read_text())
        pieces, digest = int(want["pieces"]), str(want["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{record} is damaged ({type(e).__name__}: {e}); restore it or remove it") from None
    got = _tokenizer_record(run_dir / TOKENIZER_FILE, tok.vocab_size)
    if (got["pieces"], got["sha256"]) != (pieces, digest):
        same = "the same number of pieces but other ones" if got["pieces"] == pieces else "another tokenizer"
        raise ValueError(
            f"{run_dir / TOKENIZER_FILE} is not the tokenizer this run trained on ({same}): it has "
            f"{got['pieces']} pieces, the run's had {pieces}; put the run's own spiece.model back"
        )


def train_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The run's train_config.json; FileNotFoundError naming it when the directory has none (an export)."""
    file = Path(run_dir) / TRAIN_CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: {run_dir} does not record the corpus it trained on")
    return TrainConfig.load_json(file)


def language(run_dir: str | os.PathLike, spec: str | None = None) -> str:
    """What the run learned, "code" or "prose": its train_config.json's language, or for a directory without
    one (an export) the language of the corpus ``spec`` (code when None)."""
    if (Path(run_dir) / TRAIN_CONFIG_FILE).is_file():
        return train_config(run_dir).language
    return corpus_language(spec)


def training_corpus(tc: TrainConfig) -> tuple[Corpus, int]:
    """The corpus ``tc`` names, read by its pipeline -> ``(Corpus, the number of training lines)``. In memory
    the Corpus holds every line; streamed (grain) its training part is the tokenizer's sample of them."""
    if tc.pipeline == "grain":
        from t5vae import pipeline  # imports grain: only a run that asks for it pays for it

        return pipeline.load_corpus(tc)
    lines = data.load_corpus(tc.corpus, tc.validation_percent, tc.min_chars, tc.max_chars)
    return lines, len(lines.train)


def corpus(run_dir: str | os.PathLike, spec: str | None = None) -> Corpus:
    """The lines a run trained on and held out, as its train_config.json names them (the one place that reads
    a run's corpus: evaluation, the aggregate prior, the demo), or ``spec`` read with the run's settings."""
    tc = train_config(run_dir)
    return training_corpus(tc if spec is None else tc.replace(corpus=spec))[0]


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


def check_out(out: Path) -> None:
    """``--out`` must be a directory or not exist yet."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory; choose another --out")


@contextmanager
def claim(out: Path, chief: bool = True):
    """Hold ``out``'s lock (creating ``out`` if needed) for the block. A directory this call created is removed
    again if the block fails before anything but the lock and the incomplete mark was written to it."""
    out = Path(out)
    check_out(out)
    if not chief:  # another host's process 0 holds the lock and writes the files
        yield
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = _lock(out)
    try:
        yield
    except BaseException:
        if created and is_new(out):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race with a waiting writer)


def _lock(out: Path) -> int:
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunDirBusy(
                f"{out} is in use by another t5vae run (PID {holder}); wait for it to finish, stop "
                f"it, or choose another --out"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def is_incomplete(out: Path) -> bool:
    """Marked incomplete and without a committed checkpoint: nothing in ``out`` may be reused."""
    return (Path(out) / INCOMPLETE_FILE).exists() and not checkpoint.committed_steps(out)


def mark_incomplete(out: Path) -> None:
    (Path(out) / INCOMPLETE_FILE).write_text(
        "this run has not reached its first checkpoint yet; the next run here starts over\n"
    )


def mark_complete(out: Path) -> None:
    (Path(out) / INCOMPLETE_FILE).unlink(missing_ok=True)


def clear(out: Path) -> list[str]:
    """Remove everything in ``out`` but its lock -> the names removed."""
    removed = []
    for p in sorted(Path(out).iterdir()):
        if p.name == LOCK_FILE:
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        removed.append(p.name)
    return removed


def is_new(out: Path) -> bool:
    """Nothing in ``out`` but the lock and the incomplete mark: a directory no run has written to yet."""
    return {p.name for p in Path(out).iterdir()} <= {LOCK_FILE, INCOMPLETE_FILE}


def reuse_or_clear(out: Path, overwrite: bool, log) -> bool:
    """Whether ``out`` holds a run to resume; debris of a run that never reached a checkpoint, and with
    ``overwrite`` a whole run, are removed first. Anything that is not a t5vae run is refused."""
    if is_incomplete(out):
        removed = clear(out)
        if removed != [INCOMPLETE_FILE]:
            log(
                f"{out} holds a run that stopped before its first checkpoint; starting it over (removed "
                f"{', '.join(n for n in removed if n != INCOMPLETE_FILE)})"
            )
        return False
    if (out / checkpoint.CONFIG_FILE).is_file():
        if not overwrite:
            return True
        log(f"--overwrite: removing the run in {out} ({', '.join(clear(out))})")
        return False
    if not is_new(out):
        found = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
        raise FileExistsError(
            f"{out} exists and is not a t5vae run directory (it holds {', '.join(found[:5])}"
            f"{' ...' if len(found) > 5 else ''}); choose another --out"
        )
    return False


# Settings that may change when a run is resumed; any other difference is an error.
RESUMABLE = (
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "progress",
    "max_minutes",
    "eval_pairs",
    "eval_batch_size",
    "eval_every",
)


def _flat(d: dict, prefix: str = "") -> dict:
    """A config dict with its nested dicts (the backbone's ``t5``) flattened to dotted names."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else f"{r[:40]}... ({len(r)} characters)"


def check_resumable(run_dir: Path, cfg: Config, tc: TrainConfig, log=print) -> bool:
    """Refuse to resume a run with other settings, listing only the fields that differ. The backbone's run-time
    fields (dtype, param_dtype, remat, kernels) may change, with a notice -> whether any did."""
    old = {
        **_flat(Config.load_json(run_dir / CONFIG_FILE).to_dict(), "model."),
        **_flat(TrainConfig.load_json(run_dir / TRAIN_CONFIG_FILE).to_dict(), "train."),
    }
    new = {**_flat(cfg.to_dict(), "model."), **_flat(tc.to_dict(), "train.")}
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    runtime = [k for k in changed if k.removeprefix("model.t5.") in _RUNTIME_FIELDS]
    diffs = [
        f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}"
        for k in changed
        if k not in runtime and k.removeprefix("train.") not in RESUMABLE
    ]
    if diffs:
        raise ValueError(
            f"{run_dir} holds a run with a different config; refusing to resume it "
            f"(use another --out, or --overwrite to start over):\n  " + "\n  ".join(diffs)
        )
    if runtime:
        what = ", ".join(f"{k.removeprefix('model.t5.')} {old.get(k)} -> {new.get(k)}" for k in runtime)
        log(
            f"note: resuming with other run-time settings ({what}); they change memory and speed, not the model"
        )
    return bool(runtime)
