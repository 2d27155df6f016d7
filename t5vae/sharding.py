"""Sharding over a ("data", "fsdp", "model") device mesh, by the logical-axis rules of t5vae.specs.

    mesh = make_mesh("data=2,fsdp=2,model=2")           # -1 = whatever devices are left
    shardings = param_shardings(cfg, mesh)               # T5Config, Config or any ParamSpec tree
    params = shard_init(cfg, key, mesh)                  # created directly in their sharding
    cfg, params = t5vae.load_t5(path, shardings=param_shardings(t5_cfg, mesh))
    batch = global_batch(local_batch, mesh)              # each process passes only its rows

Multi-host: call :func:`initialize_distributed` first in every process; each process reads the rows
:func:`process_slice` gives it; the same program then runs on 1 CPU, 8 fake devices, a GPU or a TPU slice.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from t5vae import t5, vae
from t5vae.config import Config, T5Config
from t5vae.specs import MESH_AXES, RULES, abstract, is_spec, logical_to_spec, mesh_axes

# -- meshes ----------------------------------------------------------------------------------------


def parse_mesh(spec: str | Mapping[str, int] | None, n_devices: int | None = None) -> dict[str, int]:
    """``"data=4,fsdp=1,model=2"`` or a dict -> {axis: size} over all of MESH_AXES (missing ones are 1).

    One size may be -1: it takes whatever devices the others leave (``n_devices``, default all devices).
    """
    n_devices = jax.device_count() if n_devices is None else n_devices
    if spec is None or spec == "":
        spec = {"data": -1}
    if isinstance(spec, str):
        items = {}
        for part in spec.replace(" ", "").split(","):
            name, eq, size = part.partition("=")
            if not eq or not size.lstrip("-").isdigit():
                raise ValueError(
                    f"bad mesh spec {spec!r}: expected comma-separated axis=size, e.g. "
                    f"'data=4,fsdp=1,model=2', got {part!r}"
                )
            if name in items:
                raise ValueError(f"bad mesh spec {spec!r}: axis {name!r} given twice")
            items[name] = int(size)
        spec = items
    unknown = sorted(set(spec) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"unknown mesh axis {unknown} in {spec!r}; the axes are {list(MESH_AXES)}")
    sizes = {a: int(spec.get(a, 1)) for a in MESH_AXES}
    auto = [a for a, s in sizes.items() if s == -1]
    if len(auto) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise ValueError(f"bad mesh spec {spec!r}: sizes must be positive, with at most one -1")
    if auto:
        rest = math.prod(s for s in sizes.values() if s != -1)
        if n_devices % rest:
            raise ValueError(
                f"mesh {spec!r}: cannot fill mesh axis {auto[0]!r} (-1): {n_devices} devices are "
                f"not divisible by the other axes' product {rest}"
            )
        sizes[auto[0]] = n_devices // rest
    return sizes


def make_mesh(spec: str | Mapping[str, int] | None = None, devices=None) -> Mesh:
    """A ("data", "fsdp", "model") mesh from a spec string or dict (see :func:`parse_mesh`); default all-data.

    Asking for fewer devices than exist uses the first ones (single process only); more is an error.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec, len(devices))
    n = math.prod(sizes.values())
    shape = ", ".join(f"{a}={s}" for a, s in sizes.items())
    if n > len(devices):
        raise ValueError(
            f"mesh {shape} needs {n} devices but only {len(devices)} exist "
            f"({devices[0].platform}; {jax.process_count()} process(es))"
        )
    if n < len(devices) and jax.process_count() > 1:
        raise ValueError(
            f"mesh {shape} uses {n} of the {len(devices)} devices; a multi-process mesh must use all of them"
        )
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=auto, devices=devices[:n])


def mesh_sizes(mesh: Mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.devices.shape))


# -- logical axes -> shardings ---------------------------------------------------------------------


def _check_divisible(shape, axes, mesh: Mesh, rules, where: str) -> None:
    sizes = mesh_sizes(mesh)
    for dim, (size, name) in enumerate(zip(shape, axes)):
        targets = mesh_axes(name, rules)
        missing = [a for a in targets if a not in sizes]
        if missing:
            raise ValueError(
                f"{where}: logical axis {name!r} maps to mesh axis {missing}, which the mesh "
                f"{sizes} does not have"
            )
        parts = math.prod(sizes[a] for a in targets)
        if size % parts:
            desc = " x ".join(f"{a}={sizes[a]}" for a in targets)
            raise ValueError(
                f"{where}: dimension {dim} ({name!r}, size {size}) is not divisible by mesh axis "
                f"{desc} ({parts} shards); choose a mesh whose axes divide it"
            )


def _spec_tree(specs_or_cfg):
    """The spec tree of a T5Config or Config; any other argument is taken to be a spec tree."""
    if isinstance(specs_or_cfg, T5Config):
        return t5.param_specs(specs_or_cfg)
    if isinstance(specs_or_cfg, Config):
        return vae.param_specs(specs_or_cfg)
    return specs_or_cfg


def named_sharding(
    mesh: Mesh, shape, axes, rules: Mapping[str, Any] = RULES, where: str = "array"
) -> NamedSharding:
    """The sharding of one array with logical ``axes``; raises if the mesh does not divide a dimension."""
    if len(shape) != len(axes):
        raise ValueError(
            f"{where}: shape {tuple(shape)} has {len(shape)} dims but logical axes {tuple(axes)}"
        )
    _check_divisible(shape, axes, mesh, rules, where)
    return NamedSharding(mesh, logical_to_spec(axes, rules))


def param_shardings(specs_or_cfg, mesh: Mesh, rules: Mapping[str, Any] = RULES):
    """``NamedSharding`` per leaf of a ParamSpec tree (or of ``param_specs(cfg)`` for a T5Config / Config).

    Every dimension is checked against its mesh axes first: a mesh that does not divide one raises.
    """
    specs = _spec_tree(specs_or_cfg)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: named_sharding(mesh, s.shape, s.axes, rules, f"param {jax.tree_util.keystr(path)}"),
        specs,
        is_leaf=is_spec,
    )


def _param_table(specs) -> dict:
    leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=is_spec)
    return {tuple(jax.tree_util.keystr((k,)) for k in path): s for path, s in leaves}


def _dropped_axes(shape, spec):
    """Candidate logical axes for a state leaf whose shape is the param's shape with some dims removed."""
    n, k = len(spec.shape), len(shape)
    if k > n:
        return
    for keep in itertools.combinations(range(n), k):
        if tuple(spec.shape[i] for i in keep) == tuple(shape):
            yield tuple(spec.axes[i] for i in keep)


def state_shardings(abstract_state, specs_or_cfg, mesh: Mesh, rules: Mapping[str, Any] = RULES):
    """Shardings for any tree holding params-shaped subtrees: a train state, an optax state.

    A leaf whose key path ends in a param's path follows that param: same shape, same sharding; a shape
    with dims dropped (Adafactor's factored ``v_row`` / ``v_col``) keeps the axes of the dims it kept.
    Everything else (step counters, Adafactor's unfactored placeholders) is replicated.
    """
    table = _param_table(_spec_tree(specs_or_cfg))
    rep = replicated(mesh)

    def one(path, leaf):
        keys = tuple(jax.tree_util.keystr((k,)) for k in path)
        spec = next((table[keys[i:]] for i in range(len(keys)) if keys[i:] in table), None)
        shape = tuple(np.shape(leaf))
        if spec is None:
            return rep
        where = f"state {jax.tree_util.keystr(path)}"
        if shape == tuple(spec.shape):
            return named_sharding(mesh, shape, spec.axes, rules, where)
        for axes in _dropped_axes(shape, spec):
            try:
                return named_sharding(mesh, shape, axes, rules, where)
            except ValueError:
                continue
        return rep

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def opt_state_shardings(optimizer, specs_or_cfg, mesh: Mesh, rules: Mapping[str, Any] = RULES):
    """Shardings of ``optimizer.init(params)`` for the params of a spec tree (or cfg), derived from theirs."""
    tree = _spec_tree(specs_or_cfg)
    return state_shardings(jax.eval_shape(optimizer.init, abstract(tree, np.float32)), tree, mesh, rules)


# -- batches ---------------------------------------------------------------------------------------


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Mapping[str, Any] = RULES) -> NamedSharding:
    """Leading (batch) dimension over the "batch" rule's mesh axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


def batch_shardings(batch, mesh: Mesh, rules: Mapping[str, Any] = RULES):
    """``batch_sharding`` for every array of a batch pytree; raises if the batch size is not divisible."""

    def one(path, x):
        shape = np.shape(x)
        _check_divisible(shape[:1], ("batch",), mesh, rules, f"batch {jax.tree_util.keystr(path)}")
        return batch_sharding(mesh, len(shape), rules)

    return jax.tree_util.tree_map_with_path(one, batch)


def process_slice(n_examples: int, mesh: Mesh | None = None, rules: Mapping[str, Any] = RULES) -> slice:
    """The rows of ``n_examples`` this process reads: with a mesh, exactly the rows its devices hold in
    :func:`batch_sharding` (so :func:`global_batch` rebuilds the same global array); without, an even split."""
    if mesh is None:
        count, index = jax.process_count(), jax.process_index()
        if n_examples % count:
            raise ValueError(f"{n_examples} examples cannot be split evenly over {count} processes")
        per = n_examples // count
        return slice(index * per, (index + 1) * per)
    _check_divisible((n_examples,), ("batch",), mesh, rules, "batch")
    idx = batch_sharding(mesh, 1, rules).addressable_devices_indices_map((n_examples,))
    starts = sorted({i[0].indices(n_examples)[:2] for i in idx.values()})
    lo, hi = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != hi - lo:
        raise ValueError(
            f"this process's devices hold non-contiguous rows {starts} of the batch; "
            f"order the mesh so each process owns one block"
        )
    return slice(lo, hi)


def barrier(name: str) -> None:
    """Wait until every process reaches this point (a no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch, mesh: Mesh, rules: Mapping[str, Any] = RULES):
    """One global array per leaf from each process's rows (see :func:`process_slice`); batch dim sharded."""
    sizes = mesh_sizes(mesh)
    parts = math.prod(sizes[a] for a in mesh_axes("batch", rules))

    def one(x):
        x = np.asarray(x)
        n = x.shape[0] * parts // _local_batch_shards(mesh, rules)
        sharding = batch_sharding(mesh, x.ndim, rules)
        _check_divisible((n,), ("batch",), mesh, rules, "global batch")
        return jax.make_array_from_process_local_data(sharding, x, (n,) + x.shape[1:])

    return jax.tree.map(one, local_batch)


def _local_batch_shards(mesh: Mesh, rules) -> int:
    """How many distinct batch blocks this process's devices hold."""
    idx = batch_sharding(mesh, 1, rules).addressable_devices_indices_map((mesh.devices.size,))
    return len({i[0].indices(mesh.devices.size)[:2] for i in idx.values()})


# -- params created / placed in their sharding -----------------------------------------------------


@functools.lru_cache(maxsize=None)
def _sharded_init(cfg, mesh: Mesh):
    init = t5.init if isinstance(cfg, T5Config) else vae.init
    return jax.jit(init, static_argnums=0, out_shardings=param_shardings(cfg, mesh))


def shard_init(cfg, key: jax.Array, mesh: Mesh) -> dict:
    """``t5.init`` (T5Config) or ``vae.init`` (Config) compiled with ``out_shardings``: every leaf is
    created directly in its sharding, never whole on one device. Same values as the unsharded init."""
    return _sharded_init(cfg, mesh)(cfg, key)


def shard_params(params, specs_or_cfg, mesh: Mesh, rules: Mapping[str, Any] = RULES):
    """Place an existing params tree into its shardings (``jax.device_put``)."""
    return jax.device_put(params, param_shardings(specs_or_cfg, mesh, rules))


# -- multi-host ------------------------------------------------------------------------------------


def _launched_as_cluster(env) -> bool:
    """A multi-process launch that ``jax.distributed.initialize()`` can detect by itself."""

    def count(name):
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    return (
        env.get("T5VAE_DISTRIBUTED", "").lower() in ("1", "true", "yes")
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")  # a multi-host Cloud TPU slice
        or count("SLURM_STEP_NUM_TASKS") > 1
        or count("OMPI_COMM_WORLD_SIZE") > 1
    )


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """``jax.distributed.initialize`` when launched as several processes -> whether it is initialised.

    Explicit arguments, or ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``; else a
    multi-host TPU slice, SLURM or Open MPI launch (or ``T5VAE_DISTRIBUTED=1``) lets jax detect everything.
    A plain single process does nothing. On CPU, gloo collectives are switched on. Call it before anything
    else touches jax devices.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    explicit = coordinator_address is not None and (num_processes or 1) > 1
    if not explicit and not _launched_as_cluster(env):
        return False
    if "cpu" in env.get("JAX_PLATFORMS", "cpu").split(","):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()
    return True
