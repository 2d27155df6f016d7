"""A few sharded T5-VAE train steps, run as one process of several (or alone): the multi-host test's worker.

    python tests/multihost_train.py OUT --process-id I --num-processes 2 --port P --devices 4

Each process reads only its rows of ``OUT/data.npz`` (``t5vae.sharding.process_slice``), builds the global
batch with ``global_batch``, runs ``t5vae.train.make_train_step`` and writes ``OUT/result_<I>.json``; all
processes then save the params with orbax into ``OUT/params``, and process 0 writes the gathered params to
``OUT/gathered.npz`` for comparison. Loopback addresses only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

MESH = "data=2,fsdp=2,model=2"
STEPS = 3
BATCH = 16


def config():
    from t5vae import config as c

    return c.Config(
        t5=c.preset("tiny", num_layers=1, dropout_rate=0.1),
        n_latent_tokens=2,
        latent_size=8,
        pooling="mean",
        max_length=12,
    )


def train_config():
    from t5vae.train_config import TrainConfig

    return TrainConfig(steps=10, learning_rate=1e-2, batch_size=BATCH)


def write_data(path, n_rows: int = STEPS * BATCH, L: int = 12, vocab: int = 128, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, L + 1, n_rows)
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask, rng.integers(2, vocab, (n_rows, L)), 0).astype(np.int32)
    ids[np.arange(n_rows), lengths - 1] = 1
    np.savez(path, input_ids=ids, attention_mask=mask)


def run(data_path, mesh_spec: str = MESH):
    """Train STEPS steps on ``data_path`` -> (losses, params, rows this process read per step)."""
    import jax
    import numpy as np

    from t5vae import sharding, train, vae

    cfg, tc = config(), train_config()
    mesh = sharding.make_mesh(mesh_spec)
    params = sharding.shard_init(cfg, jax.random.key(0), mesh)
    init = lambda p: train.init_state(cfg, tc, p)  # noqa: E731
    state_sh = sharding.state_shardings(jax.eval_shape(init, vae.abstract_params(cfg)), cfg, mesh)
    state = jax.jit(init, out_shardings=state_sh)(params)
    step = train.make_train_step(cfg, tc.optimizer, tc.clip_norm, tc.weight_decay)
    key = jax.random.key(7)
    data = np.load(data_path, mmap_mode="r")
    losses, read = [], []
    for i in range(STEPS):
        rows = sharding.process_slice(BATCH, mesh)
        lo, hi = i * BATCH + rows.start, i * BATCH + rows.stop
        local = {k: np.asarray(data[k][lo:hi]) for k in ("input_ids", "attention_mask")}
        read.append([lo, hi])
        state, metrics = step(state, sharding.global_batch(local, mesh), key, tc.learning_rate)
        losses.append(float(metrics["loss"]))
    return losses, state["params"], read


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--devices", type=int, default=8)
    args = ap.parse_args(argv)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    from t5vae import checkpoint, sharding

    if args.num_processes > 1:
        assert sharding.initialize_distributed(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.process_count() == args.num_processes and jax.local_device_count() == args.devices

    losses, params, read = run(os.path.join(args.out, "data.npz"))
    result = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "losses": losses,
        "rows_read": read,
    }
    with open(os.path.join(args.out, f"result_{args.process_id}.json"), "w") as f:
        json.dump(result, f)
    checkpoint.save_params(os.path.join(args.out, "params"), params)  # every process writes its shards
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(params, tiled=True)  # global arrays -> full numpy values
    if jax.process_index() == 0:
        import numpy as np

        np.savez(
            os.path.join(args.out, "gathered.npz"),
            **{
                jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_leaves_with_path(gathered)
            },
        )
    if args.num_processes > 1:
        jax.distributed.shutdown()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
