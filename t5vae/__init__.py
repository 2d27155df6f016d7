"""t5vae: a pure-JAX T5 with a variational bottleneck."""
import importlib as _importlib

from t5vae import latent, layers, model, sharding, t5, vae
from t5vae.checkpoint import load_t5, save_t5
from t5vae.config import PRESETS, Config, T5Config, preset

try:  # load the backbone's generator module *before* binding tv.generate, so the submodule import cannot
    _importlib.import_module("t5vae.generate")  # shadow the function (importing sets the package attribute)
except ImportError:
    pass
from t5vae.model import decode, encode, from_t5, generate, init, interpolate, loss  # noqa: E402
from t5vae import pipeline  # noqa: E402
from t5vae.pipeline import Model, load  # noqa: E402
from t5vae.latent import PRIORS, FittedGaussian, analogy, sample_prior  # noqa: E402

__version__ = "0.1.0"

__all__ = ["T5Config", "Config", "PRESETS", "preset", "layers", "t5", "vae", "model", "sharding", "load_t5", "save_t5",
           "init", "from_t5", "encode", "decode", "loss", "generate", "interpolate", "load", "Model", "pipeline",
           "latent", "PRIORS", "FittedGaussian", "analogy", "sample_prior"]
