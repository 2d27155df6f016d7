"""t5vae: a pure-JAX T5 with a variational bottleneck."""
from t5vae import layers, t5
from t5vae.checkpoint import load_t5, save_t5
from t5vae.config import PRESETS, T5Config, preset

__version__ = "0.1.0"

__all__ = ["T5Config", "PRESETS", "preset", "layers", "t5", "load_t5", "save_t5"]
