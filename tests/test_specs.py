"""Spec trees (t5vae.specs): init and abstract shapes from ParamSpec leaves, check_tree's named mismatches,
the logical-axis RULES table, logical_to_spec / mesh_axes, and constrain with and without a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t5vae import sharding as sh
from t5vae import specs
from t5vae.specs import ParamSpec

# ARCHITECTURE.md's table, written out again here so a change to specs.RULES has to be deliberate.
EXPECTED_RULES = {
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

TREE = {
    "w": ParamSpec((64, 256), ("embed", "mlp"), specs.normal(2.0)),
    "block": {
        "scale": ParamSpec((8,), ("embed",), specs.ones),
        "bias": ParamSpec((3, 8), ("layers", "embed"), specs.zeros),
    },
    "v": ParamSpec((64, 256), ("embed", "mlp"), specs.normal(2.0)),
}


def test_init_draws_every_leaf_with_its_own_initializer_key_and_dtype():
    p = jax.jit(lambda key: specs.init(TREE, key, "bfloat16"))(jax.random.key(0))
    assert jax.tree.structure(p) == jax.tree.structure(TREE, is_leaf=specs.is_spec)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p))
    np.testing.assert_array_equal(np.asarray(p["block"]["scale"], np.float32), np.ones(8))
    np.testing.assert_array_equal(np.asarray(p["block"]["bias"], np.float32), np.zeros((3, 8)))
    w, v = np.asarray(p["w"], np.float32), np.asarray(p["v"], np.float32)
    assert abs(w.std() - 2.0) < 0.05 and abs(w.mean()) < 0.05  # normal(std)
    assert not np.allclose(w, v)  # two leaves of one spec: different keys
    again = specs.init(TREE, jax.random.key(0), "bfloat16")
    jax.tree.map(np.testing.assert_array_equal, p, again)  # a function of the key
    assert not np.allclose(np.asarray(specs.init(TREE, jax.random.key(1), "float32")["w"]), w)


def test_abstract_is_the_shape_and_dtype_of_init():
    got = specs.abstract(TREE, "float16")
    want = jax.eval_shape(lambda: specs.init(TREE, jax.random.key(0), "float16"))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype) == (b.shape, b.dtype)
    assert specs.is_spec(TREE["w"]) and not specs.is_spec((64, 256)) and not specs.is_spec(got["w"])


def test_check_tree_names_every_missing_unexpected_and_misshapen_leaf():
    abstract = specs.abstract(TREE, "float32")
    good = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
    specs.check_tree(good, abstract, "params")  # no error
    bad = {
        "w": np.zeros((64, 255)),
        "block": {"scale": np.zeros(8), "extra": np.zeros(2)},
        "v": np.zeros((64, 256)),
    }
    with pytest.raises(ValueError) as e:
        specs.check_tree(bad, abstract, "the converted params")
    msg = str(e.value)
    assert msg.startswith("the converted params does not match the expected params tree")
    for part in (
        "missing ['block']['bias'] (3, 8)",
        "unexpected ['block']['extra'] (2,)",
        "['w']: shape (64, 255), expected (64, 256)",
    ):
        assert part in msg, (part, msg)
    assert "['v']" not in msg and "['block']['scale']" not in msg  # only the leaves that differ


def test_rules_table_is_the_architecture_one():
    assert specs.RULES == EXPECTED_RULES and sh.RULES is specs.RULES  # the only table; sharding asks it
    assert specs.logical_to_spec(("layers", "embed", "heads", "kv")) == P(None, "fsdp", "model", None)
    assert specs.logical_to_spec(("vocab", "embed")) == P("model", "fsdp")
    assert specs.logical_to_spec(("batch", "length")) == P(("data", "fsdp"), None)
    with pytest.raises(KeyError, match="nonsense"):
        specs.logical_to_spec(("embed", "nonsense"))
    with pytest.raises(ValueError, match="two dimensions"):
        specs.logical_to_spec(("heads", "mlp"))


def test_mesh_axes_of_one_logical_axis():
    assert specs.mesh_axes(None) == () and specs.mesh_axes("kv") == ()
    assert specs.mesh_axes("embed") == ("fsdp",) and specs.mesh_axes("batch") == ("data", "fsdp")
    assert specs.mesh_axes("embed", {"embed": ("model", "data")}) == ("model", "data")
    assert specs.logical_to_spec((None, "embed"), {"embed": "model"}) == P(None, "model")  # other rules
    with pytest.raises(KeyError, match=r"logical axis 'heads' has no sharding rule; known: \['embed'\]"):
        specs.mesh_axes("heads", {"embed": "fsdp"})


@pytest.fixture(scope="module")
def mesh222():
    return sh.make_mesh("data=2,fsdp=2,model=2")


def test_constrain_is_noop_without_mesh_and_shards_with_one(mesh222):
    x = jnp.ones((8, 4))
    assert specs.constrain(x, ("batch", None)) is x
    f = jax.jit(lambda x: specs.constrain(x * 2, ("batch", "heads")))
    with jax.set_mesh(mesh222):
        y = f(jnp.ones((8, 4)))
    assert y.sharding.is_equivalent_to(NamedSharding(mesh222, P(("data", "fsdp"), "model")), 2)
    assert y.addressable_shards[0].data.shape == (2, 2)
    z = jax.jit(lambda x: specs.constrain(x + 1, ("embed", None), mesh=mesh222))(jnp.ones((8, 4)))
    assert z.sharding.is_equivalent_to(NamedSharding(mesh222, P("fsdp", None)), 2)
    assert not z.sharding.is_equivalent_to(NamedSharding(mesh222, P()), 2)
