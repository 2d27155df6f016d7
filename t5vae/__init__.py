"""t5vae: a pure-JAX T5 with a variational bottleneck."""

from t5vae import bottleneck, decoding, kernels, latent, layers, sharding, specs, t5, text, vae
from t5vae.checkpoint import load_t5, save_t5
from t5vae.config import PRESETS, Config, T5Config, preset
from t5vae.latent import PRIORS, FittedGaussian, analogy, interpolate, sample_prior
from t5vae.text import Model, load
from t5vae.train_config import TrainConfig
from t5vae.vae import decode, encode, from_t5, generate, init, loss

__version__ = "0.1.0"

__all__ = [
    "T5Config",
    "Config",
    "TrainConfig",
    "PRESETS",
    "preset",
    "specs",
    "layers",
    "kernels",
    "t5",
    "decoding",
    "bottleneck",
    "vae",
    "latent",
    "text",
    "sharding",
    "load_t5",
    "save_t5",
    "init",
    "from_t5",
    "encode",
    "decode",
    "loss",
    "generate",
    "interpolate",
    "load",
    "Model",
    "PRIORS",
    "FittedGaussian",
    "analogy",
    "sample_prior",
]
