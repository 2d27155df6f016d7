"""t5vae.sharding on 8 fake CPU devices: mesh specs, param / optimizer-state / batch shardings by the rules
table (test_specs), sharded init, sharded decoding, the global batch and its MMD, multi-host set-up."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from test_specs import EXPECTED_RULES

from t5vae import bottleneck, config, t5, vae
from t5vae import sharding as sh
from t5vae.decoding import decoder_weights
from t5vae.specs import ParamSpec, is_spec

MESHES = ["data=8", "fsdp=8", "data=2,model=4", "data=2,fsdp=2,model=2"]
T5_TINY = config.preset("tiny", dropout_rate=0.0)
VCFG = config.Config(t5=T5_TINY, n_latent_tokens=2, latent_size=8, pooling="attention", max_length=12)


def leaves_with_paths(tree):
    return [
        (jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_spec)
    ]


def rel_diff(a, b) -> float:
    """max |a - b| / max |b| (0 when both are exactly zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / scale) if scale > 0 else float(np.max(np.abs(a)))


# -- meshes ----------------------------------------------------------------------------------------


def test_mesh_spec_parsing_and_fill():
    assert sh.parse_mesh("data=4,fsdp=1,model=2", 8) == {"data": 4, "fsdp": 1, "model": 2}
    assert sh.parse_mesh("data=-1,model=2", 8) == {"data": 4, "fsdp": 1, "model": 2}
    assert sh.parse_mesh({"fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "model": 1}
    assert sh.parse_mesh(None, 8) == {"data": 8, "fsdp": 1, "model": 1}
    mesh = sh.make_mesh("data=2,fsdp=2,model=2")
    assert mesh.axis_names == ("data", "fsdp", "model") and mesh.devices.shape == (2, 2, 2)
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    assert sh.make_mesh({"model": -1}).devices.shape == (1, 1, 8)
    assert sh.make_mesh("data=2").devices.size == 2  # fewer devices than exist: the first two


@pytest.mark.parametrize(
    "spec, words",
    [
        ("data=16", ["16 devices", "only 8"]),
        ("data=4,model=4", ["16 devices", "only 8"]),
        ("data=3,model=-1", ["not divisible", "'model'"]),
        ("pipe=2", ["unknown mesh axis", "pipe"]),
        ("data=-1,model=-1", ["at most one -1"]),
        ("data:2", ["axis=size"]),
        ("data=2,data=4", ["given twice"]),
    ],
)
def test_bad_mesh_specs_raise_clearly(spec, words):
    with pytest.raises(ValueError) as e:
        sh.make_mesh(spec)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


# -- param shardings ------------------------------------------------------------------------------


def expected_spec(axes) -> P:
    out = []
    for a in axes:
        m = EXPECTED_RULES[a]
        out.append(m)
    return P(*out)


@pytest.mark.parametrize("spec", MESHES)
@pytest.mark.parametrize("which", ["t5", "t5-per-layer", "vae"])
def test_param_shardings_follow_the_rules(spec, which):
    mesh = sh.make_mesh(spec)
    cfg = {"t5": T5_TINY, "t5-per-layer": T5_TINY.replace(relative_attention_per_layer=True), "vae": VCFG}[
        which
    ]
    specs = vae.param_specs(cfg) if which == "vae" else t5.param_specs(cfg)
    shardings = dict(leaves_with_paths(sh.param_shardings(cfg, mesh)))
    spec_leaves = leaves_with_paths(specs)
    assert set(shardings) == {k for k, _ in spec_leaves}
    for path, s in spec_leaves:
        got = shardings[path]
        assert got.mesh == mesh, path
        assert got.spec == expected_spec(s.axes), (path, got.spec, s.axes)
    if which == "vae":  # the bottleneck's own axes are covered too
        assert shardings["['latent_encoder']['queries']"].spec == P(None, "fsdp")
        assert shardings["['latent_encoder']['attn']['q']"].spec == P("fsdp", "model", None)
    if which == "t5-per-layer":  # one table per layer, split by heads as the shared one is
        assert shardings["['decoder']['layers']['relpos_bias']"].spec == P(None, None, "model")


def test_indivisible_dimension_names_dimension_and_mesh_axis():
    with pytest.raises(ValueError) as e:
        sh.param_shardings(T5_TINY.replace(num_heads=3), sh.make_mesh("data=2,model=4"))
    msg = str(e.value)
    for w in ("'heads', size 3", "model=4", "param ['decoder']['layers']['cross_attn']['k']"):
        assert w in msg, (w, msg)
    with pytest.raises(ValueError, match=r"\('embed', size 36\) is not divisible by mesh axis fsdp=8"):
        sh.param_shardings({"w": ParamSpec((4, 36), ("layers", "embed"), None)}, sh.make_mesh("fsdp=8"))


# -- optimizer state -------------------------------------------------------------------------------


def test_adamw_state_mirrors_param_shardings():
    mesh = sh.make_mesh("data=2,fsdp=2,model=2")
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    st = sh.opt_state_shardings(opt, VCFG, mesh)
    params = sh.param_shardings(VCFG, mesh)
    adam = st[1][0]
    assert jax.tree.structure(adam.mu) == jax.tree.structure(params)
    for tree in (adam.mu, adam.nu):
        for (p1, a), (p2, b) in zip(leaves_with_paths(tree), leaves_with_paths(params)):
            assert p1 == p2 and a.spec == b.spec, (p1, a.spec, b.spec)
    assert adam.count.spec == P()


def test_factored_adafactor_state_drops_the_reduced_axis():
    mesh = sh.make_mesh("data=2,fsdp=2,model=2")
    specs = {
        "big": ParamSpec((4, 256, 128), ("layers", "mlp", "embed"), None),  # factored over dims 1, 2
        "emb": ParamSpec((384, 256), ("vocab", "embed"), None),  # factored over dims 0, 1
        "small": ParamSpec((8, 32), ("embed", "heads"), None),
    }  # too small: not factored
    opt = optax.adafactor(1e-3)
    abstract = jax.eval_shape(
        opt.init, jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32), specs, is_leaf=is_spec)
    )
    shardings = sh.opt_state_shardings(opt, specs, mesh)
    state, sstate = abstract[0], shardings[0]
    for name, spec in specs.items():
        for field in ("v_row", "v_col", "v"):
            shape = getattr(state, field)[name].shape
            got = getattr(sstate, field)[name].spec
            if shape == spec.shape:
                want = expected_spec(spec.axes)
            elif shape == (1,):
                want = P()
            else:  # exactly one dimension reduced: the remaining dims keep their axes
                (kept,) = [
                    tuple(a for i, a in enumerate(spec.axes) if i != d)
                    for d in range(len(spec.shape))
                    if tuple(n for i, n in enumerate(spec.shape) if i != d) == shape
                ]
                want = expected_spec(kept)
            assert got == want, (name, field, shape, got, want)
    # the factored leaves really are factored, so the branch above was exercised
    assert state.v_row["big"].shape != (4, 256, 128) and state.v_col["emb"].shape not in ((1,), (384, 256))
    # optax: v_row [4, 128] keeps "embed", v_col [4, 256] keeps "mlp"
    assert sstate.v_row["big"].spec == P(None, "fsdp") and sstate.v_col["big"].spec == P(None, "model")
    # and the state can be created directly in those shardings, then updated with sharded params
    params = jax.device_put(
        jax.tree.map(lambda s: jnp.ones(s.shape), specs, is_leaf=is_spec), sh.param_shardings(specs, mesh)
    )
    st = jax.jit(opt.init, out_shardings=shardings)(params)
    assert st[0].v_col["big"].sharding.spec == P(None, "model")
    assert st[0].v_col["big"].addressable_shards[0].data.shape == (4, 128)


# -- init, placement, bytes ------------------------------------------------------------------------


def per_device_bytes(params) -> int:
    dev = jax.devices()[0]
    return sum(
        s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards if s.device == dev
    )


@pytest.mark.parametrize(
    "spec, shrunk_by",
    [
        ("data=8", {}),
        ("fsdp=8", {"embed": 8}),
        ("data=2,model=4", {"vocab": 4, "heads": 4, "mlp": 4}),
        ("data=2,fsdp=2,model=2", {"embed": 2, "vocab": 2, "heads": 2, "mlp": 2}),
    ],
)
def test_per_device_bytes_shrink(spec, shrunk_by):
    mesh = sh.make_mesh(spec)
    specs = vae.param_specs(VCFG)
    host = vae.abstract_params(VCFG)
    params = sh.shard_params(jax.tree.map(lambda a: np.ones(a.shape, a.dtype), host), VCFG, mesh)
    total = sum(a.size * 4 for a in jax.tree.leaves(host))
    want = sum(
        int(np.prod(s.shape)) * 4 // int(np.prod([shrunk_by.get(a, 1) for a in s.axes]))
        for s in jax.tree.leaves(specs, is_leaf=is_spec)
    )
    got = per_device_bytes(params)
    assert got == want, (spec, got, want, total)
    if shrunk_by:
        assert got < total / 1.5
    else:
        assert got == total
    for (path, x), (_, s) in zip(leaves_with_paths(params), leaves_with_paths(specs)):
        shard = x.addressable_shards[0].data.shape
        assert shard == tuple(n // shrunk_by.get(a, 1) for n, a in zip(s.shape, s.axes)), (path, shard)


@pytest.fixture(scope="module")
def mesh222():
    return sh.make_mesh("data=2,fsdp=2,model=2")


def test_shard_init_creates_params_in_their_sharding(mesh222):
    key = jax.random.key(3)
    params = sh.shard_init(T5_TINY, key, mesh222)
    ref = t5.init(T5_TINY, key)
    want = sh.param_shardings(T5_TINY, mesh222)
    for (path, x), (_, r), (_, s) in zip(
        leaves_with_paths(params), leaves_with_paths(ref), leaves_with_paths(want)
    ):
        assert x.sharding.is_equivalent_to(s, x.ndim), (path, x.sharding, s)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(r), err_msg=path)
    assert params["shared"]["embedding"].addressable_shards[0].data.shape == (
        T5_TINY.vocab_size // 2,
        T5_TINY.d_model // 2,
    )


# -- decoding, batches, MMD -----------------------------------------------------------------------


def test_sharded_decoding_gives_the_single_device_tokens(mesh222):
    cfg = T5_TINY.replace(eos_token_id=T5_TINY.vocab_size)  # never emitted: every step is compared
    params = t5.init(cfg, jax.random.key(5))
    ids = jnp.asarray(np.random.default_rng(0).integers(2, cfg.vocab_size, (8, 6)))
    want = np.asarray(t5.generate(params, cfg, ids, ids > 0, 5))
    sharded = sh.shard_params(params, cfg, mesh222)
    w = decoder_weights(sharded, cfg)
    assert w.layers[0]["qkv"].sharding.spec == P("fsdp", "model")  # laid out in the params' sharding
    with jax.set_mesh(mesh222):
        np.testing.assert_array_equal(t5.generate(sharded, cfg, ids, ids > 0, 5, decoder_weights=w), want)
        np.testing.assert_array_equal(t5.generate(sharded, cfg, ids, ids > 0, 5), want)


def test_global_batch_single_process(mesh222):
    batch = {"input_ids": np.arange(32, dtype=np.int32).reshape(8, 4), "w": np.arange(8.0)}
    assert sh.process_slice(8, mesh222) == slice(0, 8) and sh.process_slice(10) == slice(0, 10)
    g = sh.global_batch(batch, mesh222)
    assert g["input_ids"].sharding.spec == P(("data", "fsdp"), None)
    assert g["input_ids"].addressable_shards[0].data.shape == (2, 4)
    np.testing.assert_array_equal(np.asarray(g["input_ids"]), batch["input_ids"])
    with pytest.raises(ValueError, match=r"size 6\) is not divisible by mesh axis data=2 x fsdp=2"):
        sh.batch_shardings({"x": np.zeros((6, 3))}, mesh222)


def test_mmd_over_sharded_batch_is_the_global_one(mesh222):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(16, 8)).astype(np.float32) * 0.5 + np.linspace(-1, 1, 16, dtype=np.float32)[:, None]
    prior = rng.normal(size=(16, 8)).astype(np.float32)
    f = jax.jit(functools.partial(bottleneck.mmd, bandwidth=4.0))
    ref = float(f(z, prior))
    zs, ps = (jax.device_put(a, sh.batch_sharding(mesh222)) for a in (z, prior))
    got = float(f(zs, ps))
    assert abs(got - ref) <= 1e-5 * abs(ref), (got, ref)
    # a per-shard MMD (what a pmap-style step would compute) differs: the check above could fail
    per_shard = np.mean([float(f(z[i : i + 4], prior[i : i + 4])) for i in range(0, 16, 4)])
    assert abs(per_shard - ref) > 1e-2 * abs(ref), (per_shard, ref)


def test_initialize_distributed_is_a_noop_for_one_process(monkeypatch):
    for k in (
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
        "T5VAE_DISTRIBUTED",
        "TPU_WORKER_HOSTNAMES",
        "SLURM_STEP_NUM_TASKS",
        "OMPI_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(k, raising=False)
    assert sh.initialize_distributed() is False
    assert not jax.distributed.is_initialized() and jax.process_count() == 1
    assert sh.initialize_distributed("127.0.0.1:1", 1, 0) is False  # one process: nothing to coordinate
    # what counts as a multi-process launch that jax can detect by itself
    assert sh._launched_as_cluster({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
    assert not sh._launched_as_cluster({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert sh._launched_as_cluster({"SLURM_STEP_NUM_TASKS": "4"}) and not sh._launched_as_cluster(
        {"OMPI_COMM_WORLD_SIZE": "1"}
    )
    assert sh._launched_as_cluster({"T5VAE_DISTRIBUTED": "1"})
