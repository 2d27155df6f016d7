"""Saving and loading parameter trees with orbax, next to a ``config.json`` (and optional tokenizer).

A T5 directory (what ``python -m weights_convert`` writes)::

    OUT/config.json     Hugging Face style T5 config
    OUT/params/         orbax checkpoint of the params tree (t5vae.t5 docstring)
    OUT/spiece.model    sentencepiece tokenizer, when the source had one

Directories are written next to their destination and renamed into place, so a crash never leaves a
half-written OUT, and an existing OUT is only replaced when asked.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from t5vae import files, t5
from t5vae.config import T5Config
from t5vae.specs import check_tree

CONFIG_FILE, PARAMS_DIR, TOKENIZER_FILE = "config.json", "params", "spiece.model"


def _checkpointer():
    import orbax.checkpoint as ocp  # imported lazily: it is slow to import

    return ocp.StandardCheckpointer()


def save_params(path: str | os.PathLike, params) -> None:
    """Write a params pytree (numpy or jax arrays) as an orbax checkpoint at ``path`` (must not exist)."""
    ckpt = _checkpointer()
    ckpt.save(Path(path).absolute(), params)
    ckpt.wait_until_finished()


def save_t5(
    out: str | os.PathLike,
    cfg: T5Config,
    params,
    tokenizer: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write config.json + params (+ spiece.model) atomically into ``out``; params are checked against the specs."""
    check_tree(params, t5.abstract_params(cfg), "params")
    with files.atomic_directory(out, overwrite) as tmp:
        cfg.save_json(tmp / CONFIG_FILE)
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
        save_params(tmp / PARAMS_DIR, params)
    return Path(out)


def restore_params(path: str | os.PathLike, abstract, what: str | None = None):
    """Restore an orbax params checkpoint into the shapes/dtypes/shardings of ``abstract``."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no params checkpoint at {path}")
    with _quiet_orbax(), _checkpointer() as ckpt:
        try:
            stored = ckpt.metadata(path).item_metadata
        except Exception as e:  # noqa: BLE001  a missing or damaged metadata file, in whichever error orbax raises
            raise Unreadable(path, "its metadata", e) from None
        if stored is None:  # orbax reads a missing or unreadable metadata file as None
            raise Unreadable(path, "its metadata", FileNotFoundError("_METADATA is missing or damaged"))
        check_tree(stored.tree, abstract, what or str(path))
        try:
            return ckpt.restore(path, _placed(abstract))
        except Exception as e:  # noqa: BLE001  tensorstore, orbax and OS errors all mean: a data file cannot be read
            raise Unreadable(path, "its arrays", e) from None


def _why(e: BaseException) -> str:
    """An exception in one short line: its type and the first line of its message."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__


class Unreadable(ValueError):
    """A params checkpoint whose files are missing or damaged: ``path``, the part that failed and why."""

    def __init__(self, path: Path, part: str, e: BaseException):
        super().__init__(f"{path} is damaged: {part} cannot be read ({_why(e)})")
        self.path = path


def _placed(abstract):
    """Keep each leaf's sharding; a leaf without one is restored onto the first device."""
    return jax.tree.map(
        lambda a: (
            a
            if getattr(a, "sharding", None) is not None
            else jax.ShapeDtypeStruct(
                a.shape, a.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
            )
        ),
        abstract,
    )


def load_t5(
    path: str | os.PathLike, dtype: str | None = None, param_dtype: str | None = None, shardings=None
) -> tuple[T5Config, dict]:
    """Load a directory written by ``python -m weights_convert`` (or :func:`save_t5`) -> ``(cfg, params)``.

    ``dtype`` sets the compute dtype, ``param_dtype`` casts the stored params; ``shardings`` (a pytree of
    ``jax.sharding.Sharding`` matching the params) restores each leaf straight into its sharding.
    """
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a t5vae T5 directory: {path / CONFIG_FILE} is missing")
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    cfg = T5Config.load_json(path / CONFIG_FILE, **overrides)
    abstract = t5.abstract_params(cfg)
    if shardings is not None:
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
    return cfg, restore_params(path / PARAMS_DIR, abstract, f"{path / PARAMS_DIR}")


def non_finite(named) -> list[str]:
    """``"name (n of size)"`` for each ``(name, array)`` that holds NaN or inf, in order."""
    found = []
    for name, x in named:
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.inexact) or x.dtype.kind == "V" or "float" in str(x.dtype):
            n = int(x.size - np.count_nonzero(np.isfinite(x.astype(np.float32))))
            if n:
                found.append(f"{name} ({n} of {x.size})")
    return found


def non_finite_message(what: str, found: list[str]) -> str:
    """One line: ``what`` holds NaN or inf in these tensors (the first three named)."""
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f"{what} holds NaN or inf in {len(found)} tensor(s): {', '.join(found[:3])}{more}"


def tokenizer_path(path: str | os.PathLike) -> Path | None:
    p = Path(path) / TOKENIZER_FILE
    return p if p.is_file() else None


# -- training runs ---------------------------------------------------------------------------------
# A run directory: config.json (tv.Config), train_config.json, spiece.model, checkpoints/<step>/ (orbax
# CheckpointManager: every save is written to a temporary directory and committed by rename, so a kill -9
# mid-save leaves the previous checkpoint as the latest), params/ (final params), metrics.jsonl, eval.*.

CHECKPOINTS_DIR = "checkpoints"


# The train state is orbax's single unnamed item ("default"); a run on the grain input pipeline also saves the
# pipeline's position (JSON) as a second item, "data", in the same step directory.
STATE_ITEM, DATA_ITEM = "default", "data"


def checkpoint_manager(run_dir: str | os.PathLike, max_to_keep: int = 2, with_data: bool = False):
    """An orbax CheckpointManager over ``run_dir/checkpoints`` (async saves, keeps the newest ``max_to_keep``);
    ``with_data``: its checkpoints hold the input pipeline's state too (:data:`DATA_ITEM`)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
    items = {"item_names": (STATE_ITEM, DATA_ITEM)} if with_data else {}
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINTS_DIR, options=options, **items)


def save_train_state(manager, step: int, state, data_state: dict | None = None) -> None:
    """Save a train state pytree at ``step`` (asynchronously; call ``manager.wait_until_finished()``), with the
    input pipeline's JSON ``data_state`` when given (a ``with_data`` manager)."""
    import orbax.checkpoint as ocp

    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    # one jitted reduction: works on arrays sharded over several processes, where np.asarray cannot
    if not bool(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))(floats)):
        raise FloatingPointError(f"refusing to checkpoint step {step}: the train state holds NaN or inf")
    args = ocp.args.StandardSave(state)
    if data_state is not None:
        args = ocp.args.Composite(**{STATE_ITEM: args, DATA_ITEM: ocp.args.JsonSave(data_state)})
    manager.save(step, args=args)


def restore_train_state(
    manager,
    abstract_state,
    step: int | None = None,
    log=print,
    set_aside: bool = True,
    with_data: bool = False,
):
    """Restore the newest checkpoint that can be restored (or the given step) into the structure of
    ``abstract_state`` -> ``(step, state)``; ``(None, None)`` when there is no checkpoint. ``with_data`` (a
    ``with_data`` manager): ``(step, state, input pipeline state)``, a checkpoint without the latter is damaged.

    A checkpoint whose files are damaged or missing is skipped with a warning naming it and, with
    ``set_aside``, moved to ``RUN/checkpoints-damaged/`` (kept, not deleted); an older one is tried next.
    A checkpoint that is intact but holds a different tree (another config or optimizer) is a ValueError
    of its own: it is not damage, and no other checkpoint would fit either. When none restores, the
    ValueError lists what was tried."""
    import orbax.checkpoint as ocp

    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    tried = []
    for s in steps:
        where = Path(manager.directory) / str(s)
        stored = _stored_tree(where)
        if stored is not None and _signature(stored) != _signature(abstract_state):
            raise ValueError(
                f"checkpoint {s} in {manager.directory} does not match this model/optimizer "
                f"(was the run started with a different config?): {_difference(stored, abstract_state)}"
            )
        try:
            args = ocp.args.StandardRestore(_placed(abstract_state))
            if with_data:
                got = manager.restore(
                    s, args=ocp.args.Composite(**{STATE_ITEM: args, DATA_ITEM: ocp.args.JsonRestore()})
                )
                state = (got[STATE_ITEM], got[DATA_ITEM])
            else:
                state = manager.restore(s, args=args)
        except Exception as e:  # noqa: BLE001  tensorstore, orbax and OS errors all mean: cannot be read
            why = _why(e)
            aside = _set_aside(where) if set_aside else None
            tried.append(f"{where} ({why})")
            log(
                f"warning: checkpoint {where} cannot be restored ({why})"
                + (f"; moved it to {aside}" if aside else "")
            )
            continue
        if tried:
            manager.reload()  # the set-aside steps are gone from its list
            log(f"resuming from the older checkpoint {where} instead")
        return (s, *state) if with_data else (s, state)
    if tried:
        manager.reload()
        raise ValueError(
            f"no checkpoint in {manager.directory} could be restored; tried:\n  "
            + "\n  ".join(tried)
            + "\nstart over with --overwrite, or restore a backup of the run directory"
        )
    return (None, None, None) if with_data else (None, None)


def committed_steps(run_dir: str | os.PathLike) -> list[int]:
    """Steps of the checkpoints orbax has committed, oldest first (a save in progress lives in a
    ``*.orbax-checkpoint-tmp-*`` directory until it is renamed to its step)."""
    ck = Path(run_dir) / CHECKPOINTS_DIR
    return sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit() and p.is_dir()) if ck.is_dir() else []


def restore_checkpoint_params(
    run_dir: str | os.PathLike, abstract_params, log=print
) -> tuple[int | None, dict | None]:
    """The params alone of the newest train-state checkpoint in ``run_dir`` that can be read -> ``(step,
    params)``, ``(None, None)`` when there is none. Nothing else of the state is read (no optimizer state is
    built or restored), and a damaged checkpoint is skipped with a warning but never moved: this is a reader."""
    import orbax.checkpoint as ocp

    item = {"params": _placed(abstract_params)}
    args = ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
    )
    for s in reversed(committed_steps(run_dir)):
        where = Path(run_dir).absolute() / CHECKPOINTS_DIR / str(s)
        stored = _stored_tree(where)
        if (
            stored is not None
        ):  # intact but another model's: an error of its own, no other checkpoint fits either
            check_tree(stored["params"], abstract_params, f"the params of checkpoint {where}")
        try:
            return s, ocp.PyTreeCheckpointer().restore(where / STATE_ITEM, args=args)["params"]
        except Exception as e:  # noqa: BLE001  tensorstore, orbax and OS errors all mean: cannot be read
            why = _why(e)
            log(f"warning: checkpoint {where} cannot be restored ({why})")
    return None, None


@contextmanager
def _quiet_orbax():
    """orbax warns (through absl) about metadata it cannot read, which the caller reports in its own words."""
    absl = logging.getLogger("absl")
    level, absl.level = absl.level, logging.ERROR
    try:
        yield
    finally:
        absl.setLevel(level)


def _stored_tree(step_dir: Path):
    """The tree of array metadata a train-state checkpoint holds, or None if its metadata cannot be read."""
    with _quiet_orbax(), _checkpointer() as ckpt:
        try:
            return ckpt.metadata(step_dir / STATE_ITEM).item_metadata.tree
        except Exception:  # noqa: BLE001  missing or damaged metadata: left to the restore to decide
            return None


def _signature(tree) -> list:
    """The shape of every leaf, sorted: orbax stores the optimizer's named tuples as plain containers, so the
    tree's structure is compared by its leaves only; dtypes may differ (a run resumed with another
    param_dtype: orbax casts as it restores)."""
    return sorted(tuple(x.shape) for x in jax.tree.leaves(tree))


def _difference(stored, abstract) -> str:
    """What differs between a stored train state and the expected one, for the error message."""
    try:
        check_tree(stored["params"], abstract["params"], "params")
    except (ValueError, KeyError, TypeError) as e:
        return str(e)
    n, m = len(jax.tree.leaves(stored)), len(jax.tree.leaves(abstract))
    return (
        f"the params match but the optimizer state does not ({n} arrays stored, {m} expected): "
        f"another --optimizer?"
    )


def _set_aside(step_dir: Path) -> Path | None:
    """Move a damaged checkpoint to ``RUN/checkpoints-damaged/STEP[-n]`` -> where it went (None if it could not
    be moved)."""
    dest_dir = step_dir.parent.parent / f"{CHECKPOINTS_DIR}-damaged"
    dest = dest_dir / step_dir.name
    n = 1
    while dest.exists():
        dest, n = dest_dir / f"{step_dir.name}-{n}", n + 1
    try:
        dest_dir.mkdir(exist_ok=True)
        step_dir.rename(dest)
    except OSError:
        return None
    return dest


def save_params_replacing(path: str | os.PathLike, params) -> None:
    """Write params next to ``path`` and rename into place (replacing an older copy only once complete)."""
    path = Path(path).absolute()
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_params(tmp, params)
    files.replace_directory(tmp, path)
