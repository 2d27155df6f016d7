"""Training: optimizer and schedule, the train state, one jitted train step, and the fit loop (resumable
orbax checkpoints, progress bar, metrics.jsonl, NaN/inf guard). Opening the run directory and its data before
the first step is t5vae.run_setup."""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from t5vae import augment, checkpoint, data, evaluate, run_setup, rundir, sharding, text, vae
from t5vae.config import Config
from t5vae.runlog import RunLog, resume_logs
from t5vae.train_config import TrainConfig

# The learning curve (``eval_every``): greedy reconstruction and interpolation on this many held-out lines
# and pairs, kept small so that it costs little of the training budget.
CURVE_LINES, CURVE_PAIRS = 256, 50


def schedule(tc: TrainConfig) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` then cosine decay to ``learning_rate * end_lr_fraction``."""
    warm = max(1, min(tc.warmup_steps, tc.steps - 1))  # optax needs warmup >= 1 and decay_steps > warmup
    return optax.warmup_cosine_decay_schedule(
        0.0, tc.learning_rate, warm, max(tc.steps, warm + 1), tc.learning_rate * tc.end_lr_fraction
    )


def make_optimizer(optimizer: str = "adamw", clip_norm: float = 1.0, weight_decay: float = 0.0):
    """Global-norm clipping, then Adafactor's factored second moments with update clipping (T5's optimizer)
    or Adam (+ decoupled weight decay). The result is the update *direction*: the train step multiplies
    it by ``-lr``, so one compiled step serves every schedule (and a resumed run with more steps)."""
    if optimizer == "adafactor":
        tx = optax.chain(optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0))
    else:
        tx = optax.chain(optax.scale_by_adam(b1=0.9, b2=0.98), optax.add_decayed_weights(weight_decay))
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx)


def init_state(cfg: Config, tc: TrainConfig, params: dict) -> dict:
    opt = make_optimizer(tc.optimizer, tc.clip_norm, tc.weight_decay)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt.init(params)}


@functools.lru_cache(maxsize=8)
def make_train_step(
    cfg: Config, optimizer: str = "adamw", clip_norm: float = 1.0, weight_decay: float = 0.0, mesh=None
):
    """``train_step(state, batch, key, lr) -> (state, metrics)``, jitted, the state donated; cached per setting.

    With a ``mesh`` the state keeps the sharding the rules give it and the batch is split over data x fsdp;
    the step is one program over global arrays, so the loss (and its MMD) sees the whole global batch."""
    opt = make_optimizer(optimizer, clip_norm, weight_decay)

    def train_step(state, batch, key, lr):
        key = jax.random.fold_in(key, state["step"])
        grad_fn = jax.value_and_grad(lambda p: vae.loss(p, cfg, batch, key, state["step"]), has_aux=True)
        (_, metrics), grads = grad_fn(state["params"])
        updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(
            lambda p, u: (p - lr * u.astype(jnp.float32)).astype(p.dtype), state["params"], updates
        )
        metrics = {**metrics, "grad_norm": optax.global_norm(grads), "lr": jnp.asarray(lr, jnp.float32)}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    if mesh is None:
        return jax.jit(train_step, donate_argnums=0)
    state_sh, rep = _state_shardings(cfg, opt, mesh), sharding.replicated(mesh)

    def traced_under_mesh(*args):  # so the activation constraints in t5.py see the mesh
        with jax.set_mesh(mesh):
            return train_step(*args)

    return jax.jit(
        traced_under_mesh,
        in_shardings=(state_sh, sharding.batch_sharding(mesh, 1), rep, rep),
        out_shardings=(state_sh, rep),
        donate_argnums=0,
    )


def _state_shardings(cfg: Config, opt, mesh):
    abstract = jax.eval_shape(
        lambda p: {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": opt.init(p)},
        vae.abstract_params(cfg),
    )
    return sharding.state_shardings(abstract, cfg, mesh)


def fit(
    cfg: Config,
    tc: TrainConfig,
    run_dir: str | os.PathLike,
    enc_train: data.Encoded | None,
    params: dict,
    log=print,
    mesh=None,
    curve=None,
    renamer=None,
    tok: data.Tokenizer | None = None,
) -> tuple[dict, dict]:
    """Train in ``run_dir`` (resuming from its newest checkpoint) -> ``(params, last metrics)``.

    ``run_dir`` must already hold config.json, train_config.json and spiece.model (see t5vae.cli).
    Raises FloatingPointError on a NaN/inf loss, after which the newest checkpoint is the last good one. Ctrl-C
    (SIGINT, in the main thread) stops after the current step, checkpoints it and raises KeyboardInterrupt; a
    second Ctrl-C interrupts at once.
    ``curve(params) -> dict`` of held-out metrics, if given, runs every ``tc.eval_every`` steps; its rows go
    to ``eval_curve.jsonl`` (and TensorBoard). Its time counts against ``max_minutes``.
    ``renamer`` and ``tok``: rename the training lines' identifiers afresh every epoch (see :class:`t5vae.data.BatchStream`).
    ``tc.pipeline == "grain"``: the batches stream from ``tc.corpus`` (:mod:`t5vae.pipeline`; needs ``tok``).

    Step n's metrics are read after step n + 1 is dispatched, so the device never waits on the host; a state
    is checkpointed or evaluated only after its own metrics have been read and found finite.
    """
    run_dir = Path(run_dir)
    rundir.check_resumable(run_dir, cfg, tc, log=lambda _: None)  # prepare() has said what changed
    mngr = checkpoint.checkpoint_manager(run_dir, tc.keep_checkpoints, with_data=tc.pipeline == "grain")
    state, data_state, t0 = _initial_state(cfg, tc, params, mesh, mngr, run_dir, log)
    step, last, pending = int(state["step"]), {}, None
    train_step = make_train_step(cfg, tc.optimizer, tc.clip_norm, tc.weight_decay, mesh)
    lr_at, key = schedule(tc), jax.random.key(tc.seed, impl="unsafe_rbg")  # fast PRNG for dropout and priors
    stream = _open_stream(cfg, tc, enc_train, renamer, tok, mesh, data_state, step, log)
    out = RunLog(run_dir, tc.steps, step, tc.log_every, tc.max_minutes, t0, tc.progress, _chief(), log)
    saver, interrupt = _Saver(mngr, run_dir, stream), _Interrupt()
    try:
        while step < tc.steps:
            if interrupt.requested:
                if pending is not None:
                    last, pending = saver.read(*pending, out), None
                saver.final(step, state)
                out.say(
                    f"interrupted: saved a checkpoint at step {step} in {run_dir / rundir.CHECKPOINTS_DIR}; "
                    f"run the same command again to resume"
                )
                raise KeyboardInterrupt
            if tc.max_minutes is not None and time.time() - t0 > 60 * tc.max_minutes:
                log(f"stopping at step {step}: max_minutes={tc.max_minutes} reached")
                break
            state, metrics = train_step(state, stream(step), key, float(lr_at(_progress(tc, step, t0))))
            step += 1
            if pending is not None:
                last = saver.read(*pending, out)
            pending = (step, metrics)
            evaluate_now = curve is not None and tc.eval_every and step % tc.eval_every == 0
            if step % tc.checkpoint_every == 0 or evaluate_now:
                last, pending = saver.read(*pending, out), None
                if step % tc.checkpoint_every == 0:
                    saver.save(step, state)
                if evaluate_now:
                    t = time.time()
                    row = {k: round(float(v), 4) for k, v in curve(state["params"]).items()}
                    out.curve(step, row, time.time() - t)
        if pending is not None:
            last = saver.read(*pending, out)
        saver.final(step, state)
    finally:
        interrupt.restore()
        out.close()
        mngr.close()
        stream.close()
    return state["params"], last


def _chief() -> bool:
    return jax.process_index() == 0  # one process writes metrics and shows progress


def _progress(tc: TrainConfig, step: int, t0: float) -> int:
    """The schedule's position: the step, or further along when the time budget is being used faster."""
    if tc.max_minutes is None:
        return step
    return max(step, int(tc.steps * (time.time() - t0) / (60 * tc.max_minutes)))


def _initial_state(cfg: Config, tc: TrainConfig, params: dict, mesh, mngr, run_dir: Path, log):
    """The train state (restored from the newest checkpoint when there is one, else new; with a ``mesh``
    created directly in the rules' shardings) -> ``(state, the input pipeline's saved state or None, the
    start time, set back by the training time a resumed run already used)``."""
    if mesh is None:
        state = init_state(cfg, tc, params)
    else:
        opt = make_optimizer(tc.optimizer, tc.clip_norm, tc.weight_decay)
        state = jax.jit(lambda p: init_state(cfg, tc, p), out_shardings=_state_shardings(cfg, opt, mesh))(
            params
        )
    streamed = tc.pipeline == "grain"  # the stream's position is checkpointed with the state
    start, restored, *data_state = checkpoint.restore_train_state(
        mngr, jax.eval_shape(lambda: state), log=log, set_aside=_chief(), with_data=streamed
    )
    if restored is None:
        return state, None, time.time()
    log(f"resumed from {run_dir / rundir.CHECKPOINTS_DIR}/{start} (step {int(restored['step'])})")
    elapsed = resume_logs(run_dir, int(restored["step"]), write=_chief())
    if elapsed:
        log(f"{elapsed / 60:.1f} min of training time already used before the resume")
    return restored, data_state[0] if streamed else None, time.time() - elapsed


def _open_stream(cfg: Config, tc: TrainConfig, enc_train, renamer, tok, mesh, data_state, step: int, log):
    """The run's :class:`t5vae.data.Stream` of batches, placed on the ``mesh`` when there is one."""
    streamed = tc.pipeline == "grain"
    rows = (
        sharding.process_slice(tc.batch_size, mesh) if mesh is not None or streamed else None
    )  # its own rows
    if streamed:
        from t5vae import pipeline  # imports grain: only a run that asks for it pays for it

        stream = pipeline.for_training(tc, tok, data.length_buckets(cfg), rows.stop - rows.start, data_state)
    else:
        stream = data.BatchStream(enc_train, tc.batch_size, data.length_buckets(cfg), tc.seed, renamer, tok)
    if renamer is not None:
        stream(step)
        log(
            f"identifier renaming: {stream.swapped} of {len(enc_train)} training lines renamed this epoch "
            f"(rename_prob {tc.rename_prob}; a line whose renamings all leave its length bucket is kept as it was)"
        )
    return stream if mesh is None and not streamed else _Placed(stream, mesh, rows, streamed)


class _Placed:
    """A :class:`t5vae.data.Stream` whose batches are this process's part of the global batch: streamed, each
    process read its own rows (padded to one length for all of them); in memory, every process drew the same
    batch and keeps its own rows. With a mesh, the parts become one global array."""

    def __init__(self, stream, mesh, rows: slice, streamed: bool):
        self.stream, self.mesh, self.rows, self.streamed = stream, mesh, rows, streamed

    def __call__(self, step: int) -> dict:
        batch = self.stream(step)
        if self.streamed:
            from t5vae import pipeline

            batch = pipeline.agree_length(batch)
        elif self.mesh is not None:
            batch = {k: v[self.rows] for k, v in batch.items()}
        return batch if self.mesh is None else sharding.global_batch(batch, self.mesh)

    def get_state(self) -> dict | None:
        return self.stream.get_state()

    def close(self) -> None:
        self.stream.close()


class _Saver:
    """Checkpoints of a run, and the check that the metrics of a state are finite before it is saved. The
    run's incomplete mark goes once its first checkpoint is committed: from then on it can be resumed."""

    def __init__(self, mngr, run_dir: Path, stream):
        self.mngr, self.run_dir, self.stream = mngr, run_dir, stream
        self.incomplete = _chief() and (run_dir / rundir.INCOMPLETE_FILE).exists()

    def read(self, n: int, metrics: dict, out: RunLog) -> dict:
        """Read step ``n``'s metrics off the device: stop on NaN/inf, else write them -> the floats."""
        metrics = {k: float(v) for k, v in metrics.items()}
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            self.mngr.wait_until_finished()
            raise FloatingPointError(
                f"non-finite training metrics at step {n}: {bad}. Stopped; the newest checkpoint "
                f"({self.mngr.latest_step()}) in {self.run_dir / rundir.CHECKPOINTS_DIR} is the last good state. "
                f"Try a lower learning_rate or clip_norm."
            )
        out.step(n, metrics)
        return metrics

    def save(self, step: int, state: dict) -> None:
        checkpoint.save_train_state(self.mngr, step, state, self.stream.get_state())
        if self.incomplete:
            self.mngr.wait_until_finished()
            rundir.mark_complete(self.run_dir)
            self.incomplete = False

    def final(self, step: int, state: dict) -> None:
        """Checkpoint ``step`` unless it already is, and wait until every save is committed."""
        if self.mngr.latest_step() != step:
            self.save(step, state)
        self.mngr.wait_until_finished()


class _Interrupt:
    """While it lives, the first SIGINT only sets ``requested`` (so the loop can stop between steps, never
    inside one whose state was donated); a second one raises KeyboardInterrupt as usual."""

    def __init__(self):
        self.requested, self._old = False, None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def run(
    cfg: Config,
    tc: TrainConfig,
    out: str | os.PathLike,
    init_from: str | None = None,
    overwrite: bool = False,
    log=print,
    mesh=None,
) -> tuple[dict, dict]:
    """Train (or resume) a run in ``out``, save the final params, evaluate -> ``(params, eval results)``.

    The run holds ``out``'s lock throughout (a second writer gets :class:`t5vae.rundir.RunDirBusy`). Ctrl-C
    (KeyboardInterrupt) checkpoints the current step before it propagates."""
    with rundir.claim(Path(out), chief=jax.process_index() == 0):
        return _run(cfg, tc, Path(out), init_from, overwrite, log, mesh)


def _run(cfg, tc, out: Path, init_from, overwrite, log, mesh):
    t_start = time.time()
    cfg, tok, corpus, enc, t5_params = run_setup.prepare(cfg, tc, out, init_from, overwrite, log)
    key = jax.random.key(tc.seed)
    if mesh is None:
        params = vae.init(cfg, key) if t5_params is None else vae.from_t5(cfg, t5_params, key)
    else:
        params = (
            sharding.shard_init(cfg, key, mesh)
            if t5_params is None
            else sharding.shard_params(vae.from_t5(cfg, t5_params, key), cfg, mesh)
        )
    curve_lines = corpus.validation[:CURVE_LINES]

    def curve(params):
        r = evaluate.evaluate(
            text.Model(cfg, params, tok),
            curve_lines,
            pairs=CURVE_PAIRS,
            batch_size=tc.eval_batch_size,
            seed=tc.seed,
            language=tc.language,
        )
        return {k: r[k] for k in evaluate.CURVE_KEYS[tc.language] if k in r}

    renamer = (
        augment.Renamer(corpus.train, p_line=tc.rename_prob)
        if tc.rename_prob > 0 and enc is not None
        else None
    )
    if tc.rename_prob > 0 and enc is None:
        log(
            f"note: the grain pipeline does not rename identifiers (rename_prob {tc.rename_prob} is not applied)"
        )
    params, last = fit(cfg, tc, out, enc, params, log, mesh, curve if curve_lines else None, renamer, tok)
    checkpoint.save_params_replacing(out / rundir.PARAMS_DIR, params)  # orbax: every process takes part
    log(f"training took {time.time() - t_start:.0f}s; evaluating on {len(corpus.validation)} held-out lines")
    results = evaluate.evaluate(
        text.Model(cfg, params, tok, str(out)),
        corpus.validation,
        pairs=tc.eval_pairs,
        batch_size=tc.eval_batch_size,
        seed=tc.seed,
        language=tc.language,
    )
    results["train_seconds"] = round(time.time() - t_start, 1)
    log(evaluate.save(results, out) if jax.process_index() == 0 else evaluate.table(results))
    return params, results
