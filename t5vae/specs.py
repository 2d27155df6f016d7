"""Spec trees: ``ParamSpec(shape, logical axes, initializer)`` per leaf, and what derives from them.

One spec tree drives init, abstract shapes (what a checkpoint must hold), shardings and the converter's
validation. The logical-axis table :data:`RULES` maps axis names to mesh axes; everything asks it. This
module imports nothing from t5vae.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

ParamSpec = namedtuple("ParamSpec", "shape axes init")


def normal(std: float) -> Callable:
    """Initializer: N(0, std**2), drawn in float32 and cast."""
    return lambda key, shape, dtype: (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


def zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def is_spec(x) -> bool:
    return isinstance(x, ParamSpec)


def init(specs, key: jax.Array, dtype) -> dict:
    """Initialise every leaf of a spec tree; each leaf gets its own key, in tree-flatten order."""
    leaves, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [s.init(k, s.shape, jnp.dtype(dtype)) for s, k in zip(leaves, keys)])


def abstract(specs, dtype) -> dict:
    """``jax.ShapeDtypeStruct`` per leaf of a spec tree."""
    dt = jnp.dtype(dtype)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dt), specs, is_leaf=is_spec)


def check_tree(params, abstract_tree, what: str) -> None:
    """Raise naming every leaf whose presence or shape differs between ``params`` and ``abstract_tree``."""
    got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(abstract_tree)}
    problems = [f"missing {k} {tuple(want[k].shape)}" for k in sorted(want.keys() - got.keys())]
    problems += [f"unexpected {k} {tuple(np.shape(got[k]))}" for k in sorted(got.keys() - want.keys())]
    problems += [
        f"{k}: shape {tuple(np.shape(got[k]))}, expected {tuple(want[k].shape)}"
        for k in sorted(want.keys() & got.keys())
        if tuple(np.shape(got[k])) != tuple(want[k].shape)
    ]
    if problems:
        raise ValueError(f"{what} does not match the expected params tree:\n  " + "\n  ".join(problems))


# -- logical axes -> mesh axes -----------------------------------------------------------------------

MESH_AXES = ("data", "fsdp", "model")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated). The only such table.
RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "vocab": "model",
    "heads": "model",
    "mlp": "model",
    "embed": "fsdp",
    "kv": None,
    "layers": None,
    "relpos_buckets": None,
    "latent": None,
    "latent_tokens": None,
    "length": None,
}


def mesh_axes(logical: str | None, rules: Mapping[str, Any] = RULES) -> tuple[str, ...]:
    """The mesh axes one logical axis maps to (empty: replicated); an unknown name raises."""
    if logical is None:
        return ()
    if logical not in rules:
        raise KeyError(f"logical axis {logical!r} has no sharding rule; known: {sorted(rules)}")
    target = rules[logical]
    return () if target is None else (target,) if isinstance(target, str) else tuple(target)


def logical_to_spec(axes, rules: Mapping[str, Any] = RULES) -> P:
    """Logical axis names (one per dimension, None = replicated) -> ``PartitionSpec`` via ``rules``."""
    out, used = [], set()
    for name in axes:
        targets = mesh_axes(name, rules)
        dup = used.intersection(targets)
        if dup:
            raise ValueError(f"logical axes {tuple(axes)} map mesh axis {sorted(dup)} to two dimensions")
        used.update(targets)
        out.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return P(*out)


def constrain(x: jax.Array, logical_axes, rules: Mapping[str, Any] = RULES, mesh=None) -> jax.Array:
    """``with_sharding_constraint`` by logical axis names under the current mesh (``jax.set_mesh``) or
    ``mesh``; a no-op when there is none."""
    if mesh is None:
        if jax.sharding.get_abstract_mesh().empty:
            return x
        return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, rules))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(logical_axes, rules)))
