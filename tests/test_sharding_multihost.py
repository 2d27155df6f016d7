"""Two processes on localhost (4 fake CPU devices each, gloo collectives) train like one process with 8
devices, each reading only its rows; their orbax checkpoint restores in a single process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import multihost_train as mh
import numpy as np
import pytest

from t5vae import checkpoint, vae
from t5vae import sharding as sh

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_restores(tmp_path):
    mh.write_data(tmp_path / "data.npz")
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "multihost_train.py"),
                str(tmp_path),
                "--process-id",
                str(i),
                "--num-processes",
                "2",
                "--port",
                str(port),
                "--devices",
                "4",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    results = [json.loads((tmp_path / f"result_{i}.json").read_text()) for i in range(2)]
    assert [r["process_index"] for r in results] == [0, 1]
    assert all(r["process_count"] == 2 and r["devices"] == 8 and r["local_devices"] == 4 for r in results)
    # each process read only its half of every batch, the two halves together the whole batch
    for step, (a, b) in enumerate(zip(results[0]["rows_read"], results[1]["rows_read"])):
        assert a[1] - a[0] == b[1] - b[0] == mh.BATCH // 2, (a, b)
        assert sorted([a, b]) == [
            [step * mh.BATCH, step * mh.BATCH + 8],
            [step * mh.BATCH + 8, (step + 1) * mh.BATCH],
        ]
    assert results[0]["losses"] == results[1]["losses"]  # one global loss, seen by both

    # the same steps in this one process with 8 devices
    assert jax.process_count() == 1 and jax.device_count() == 8
    losses, params, read = mh.run(tmp_path / "data.npz")
    assert read == [[i * mh.BATCH, (i + 1) * mh.BATCH] for i in range(mh.STEPS)]
    rel = [abs(a - b) / abs(b) for a, b in zip(results[0]["losses"], losses)]
    print(f"\n2-process losses {results[0]['losses']}\n1-process losses {losses}\nmax rel {max(rel):.1e}")
    assert max(rel) < 1e-5, (results[0]["losses"], losses)
    assert len(set(losses)) == mh.STEPS  # the steps differ: data and params change

    # the 2-process checkpoint restores here, straight into this mesh's shardings
    cfg = mh.config()
    mesh = sh.make_mesh(mh.MESH)
    shardings = sh.param_shardings(cfg, mesh)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), vae.abstract_params(cfg), shardings
    )
    restored = checkpoint.restore_params(tmp_path / "params", abstract)
    gathered = np.load(tmp_path / "gathered.npz")
    worst = 0.0
    for (path, x), (_, mine), s in zip(
        jax.tree_util.tree_leaves_with_path(restored),
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree.leaves(shardings),
    ):
        k = jax.tree_util.keystr(path)
        assert x.sharding.is_equivalent_to(s, x.ndim), (k, x.sharding, s)
        np.testing.assert_array_equal(np.asarray(x), gathered[k], err_msg=k)  # exactly what was written
        b = np.asarray(mine)
        worst = max(worst, float(np.max(np.abs(np.asarray(x) - b)) / max(np.max(np.abs(b)), 1e-30)))
    print(f"restored 2-process params vs 1-process params: max rel {worst:.1e}")
    assert worst < 1e-5
