"""Test setup: 8 fake CPU devices and exact float32 matmuls, set before jax is imported."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["XDG_CACHE_HOME"] = __import__("tempfile").mkdtemp(
    prefix="t5vae-test-cache-"
)  # not the user's cache

import importlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def require(module: str):
    """Import a reference package; a missing one skips locally but fails under CI=true."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"reference package {module!r} is required under CI=true but cannot be imported: {e}")
        pytest.skip(f"{module} not installed (pip install -e '.[test]')")


# -- fixtures shared by several test files (each built once per session) ----------------------------


@pytest.fixture(scope="session")
def stdlib_corpus():
    """The embedded default corpus (walking the standard library takes seconds: done once)."""
    from t5vae import data

    return data.load_corpus()


TEXT_LINES = [f"x{i} = f({i}, y{i % 7})" for i in range(40)] + [f"import mod{i}" for i in range(20)]
TEXT_LINES += ["return self.value", "def g(a, b):", "y = [1, 2, 3]", "assert z is None"]


def random_params(cfg, seed=0):
    """T5-VAE params drawn with numpy from the spec tree (norms 1, biases 0): tv.init's first, eager call
    compiles a random op per leaf shape; the text-level tests do not care how the params came."""
    import numpy as np

    import t5vae as tv

    rng = np.random.default_rng(seed)

    def leaf(s):
        kind = getattr(s.init, "__name__", "")
        if kind in ("ones", "zeros"):
            return np.full(s.shape, float(kind == "ones"), np.float32)
        return (0.2 * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree.map(leaf, tv.vae.param_specs(cfg), is_leaf=tv.specs.is_spec)


@pytest.fixture(scope="session")
def text_tok():
    from t5vae import data

    return data.train_tokenizer(TEXT_LINES, 340)


@pytest.fixture(scope="session")
def text_cfg(text_tok):
    import t5vae as tv

    return tv.Config(
        t5=tv.preset("tiny").replace(vocab_size=text_tok.vocab_size),
        n_latent_tokens=3,
        latent_size=8,
        max_length=24,
    )


@pytest.fixture(scope="session")
def text_model(text_cfg, text_tok):
    """A text-level tv.Model with random params (untrained: its decodings are arbitrary but deterministic)."""
    import t5vae as tv

    return tv.Model(text_cfg, random_params(text_cfg), text_tok)


@pytest.fixture(scope="module")
def text_run_dir(tmp_path_factory, text_cfg, text_tok, text_model):
    """A run directory of ``text_model`` as `t5vae train` leaves it: config, tokenizer, final params and a
    train_config naming the corpus. One per test module: tests may write an aggregate posterior into it."""
    import json

    from t5vae import checkpoint, rundir

    d = tmp_path_factory.mktemp("text") / "run"
    d.mkdir()
    (d.parent / "corpus.txt").write_text("\n".join(TEXT_LINES) + "\n")
    text_tok.save(d / checkpoint.TOKENIZER_FILE)
    checkpoint.save_params(d / checkpoint.PARAMS_DIR, text_model.params)
    (d / rundir.TRAIN_CONFIG_FILE).write_text(json.dumps({"corpus": str(d.parent / "corpus.txt")}))
    text_cfg.save_json(d / checkpoint.CONFIG_FILE)
    return d


# A tiny T5-VAE trained for 6 steps by `t5vae train` (the CLI, the fit loop, checkpoints, the final
# evaluation); test_cli, test_runlog, test_text and test_train read it. Tests that change a run work on a copy.
TINY_FLAGS = [
    "--t5-d-model",
    "32",
    "--t5-d-kv",
    "8",
    "--t5-d-ff",
    "64",
    "--t5-num-layers",
    "1",
    "--t5-num-heads",
    "2",
    "--t5-relative-attention-num-buckets",
    "8",
    "--n-latent-tokens",
    "2",
    "--latent-size",
    "8",
    "--max-length",
    "8",
    "--batch-size",
    "4",
    "--vocab-size",
    "340",
    "--eval-pairs",
    "2",
    "--eval-batch-size",
    "8",
    "--progress",
    "false",
    "--log-every",
    "2",
]
LONG = "very_long_name = " + " + ".join(f"term_{i}" for i in range(30))


def run_cli(argv):
    """(exit status, stdout, stderr) of ``t5vae ARGV`` run in this process. A SystemExit gives its status:
    argparse's usage errors 2, a refused setting (``SystemExit("error: ...")``) 1 with its message on stderr."""
    import contextlib
    import io

    from t5vae import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
            err.write("" if isinstance(e.code, int) else str(e.code))
    return rc, out.getvalue(), err.getvalue()


def write_train_corpus(path):
    lines = [f"x{i} = f({i}, y{i % 7})" for i in range(40)] + [f"import mod{i}" for i in range(20)]
    lines += ["return self.value", "\tz = 'tab\there'", "é = ['@', 1]", LONG]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    import contextlib
    import io

    from t5vae import cli

    base = tmp_path_factory.mktemp("train")
    corpus = write_train_corpus(base / "corpus.txt")
    out = base / "run"
    argv = [
        "train",
        "--out",
        str(out),
        "--corpus",
        str(corpus),
        "--steps",
        "6",
        "--checkpoint-every",
        "3",
        "--eval-every",
        "3",
        "--rename-prob",
        "0.5",
        *TINY_FLAGS,
    ]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(argv)
    return {"out": out, "corpus": corpus, "argv": argv, "rc": rc, "stdout": buf.getvalue()}
