"""Model configuration: frozen dataclasses, presets, and Hugging Face ``config.json`` in/out."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

_ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")

# What the backward pass keeps of each scanned layer (jax.checkpoint's policy); the rest is recomputed.
#   "dots": the outputs of the 2-D projection dots (q|k|v, o, the MLP's); norms, softmax, dropout and the
#           small batched attention dots are recomputed. On t5-small's train step: 642 -> 449 MiB of
#           temporaries and 5-7 % faster than keeping everything (less written and read back).
#   "full": only each layer's input (one more forward of every layer: least memory).
#   "none": everything autodiff saves.
REMAT = ("dots", "full", "none")
FLOAT_DTYPES = ("float32", "bfloat16", "float16")  # compute and storage dtypes a T5Config accepts
_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat")


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file that must hold an object; errors name the file."""
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(d).__name__}")
    return d


def write_json_object(path: str | os.PathLike, d: dict) -> None:
    """The inverse of :func:`read_json_object`: indented, keys sorted, a final newline."""
    with open(path, "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """A T5 encoder-decoder. Field names follow Hugging Face's ``T5Config``; hashable, so jit can close over it.

    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype of the parameters. ``remat`` is what the
    backward pass keeps of each scanned layer's forward (see ``REMAT``); it changes memory and speed, not the
    numbers. These three are run-time choices: they are not written to a Hugging Face ``config.json``.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "dots"

    def __post_init__(self):
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"T5Config.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        self.activation  # validates feed_forward_proj
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in FLOAT_DTYPES:
                raise ValueError(f"T5Config.{name} must be float32, bfloat16 or float16, got {getattr(self, name)!r}")
        if self.remat not in REMAT:
            raise ValueError(f"T5Config.remat must be one of {list(REMAT)}, got {self.remat!r}")

    @property
    def activation(self) -> str:
        """The FFN nonlinearity; ``gated-gelu`` means the tanh approximation (``gelu_new``), as in the reference."""
        parts = self.feed_forward_proj.split("-")
        act = parts[-1]
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or act not in _ACTIVATIONS:
            raise ValueError(f"T5Config.feed_forward_proj={self.feed_forward_proj!r} is not one of "
                             f"{list(_ACTIVATIONS)} optionally prefixed by 'gated-'")
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    def replace(self, **changes: Any) -> "T5Config":
        return dataclasses.replace(self, **changes)

    # -- Hugging Face config.json ------------------------------------------------------------------
    def to_hf_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _RUNTIME_FIELDS}
        d.update(model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True,
                 torch_dtype=self.param_dtype)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict, **overrides: Any) -> "T5Config":
        """Read a Hugging Face T5/mT5 ``config.json`` dict; unknown keys are ignored, missing ones defaulted."""
        if d.get("model_type", "t5") not in ("t5", "mt5", "umt5"):
            raise ValueError(f"config.json has model_type={d.get('model_type')!r}; only T5 and mT5 are supported")
        names = {f.name for f in dataclasses.fields(cls)} - set(_RUNTIME_FIELDS)
        kwargs = {k: v for k, v in d.items() if k in names}
        if d.get("torch_dtype") in FLOAT_DTYPES:
            kwargs["param_dtype"] = d["torch_dtype"]
        kwargs.update(overrides)
        return cls(**kwargs)

    def save_json(self, path: str | os.PathLike) -> None:
        write_json_object(path, self.to_hf_dict())

    @classmethod
    def load_json(cls, path: str | os.PathLike, **overrides: Any) -> "T5Config":
        return cls.from_hf_dict(read_json_object(path), **overrides)


PRESETS: dict[str, T5Config] = {
    # v1.0: relu FFN, tied embeddings (output scaled by d_model**-0.5)
    "t5-small": T5Config(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": T5Config(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
    "t5-large": T5Config(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
    # v1.1 / Flan-T5: gated-gelu, untied lm_head
    "t5-v1_1-small": T5Config(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                              feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "t5-v1_1-base": T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                             feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "flan-t5-small": T5Config(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                              feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "flan-t5-base": T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                             feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # for tests and quick experiments
    "tiny": T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16),
}


def preset(name: str, **overrides: Any) -> T5Config:
    """A named T5 shape (``t5-small``, ``flan-t5-base``, ``tiny``…) with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown T5 preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


# -- the T5-VAE ------------------------------------------------------------------------------------

POOLINGS = ("mean", "first", "attention")

# The default backbone of `t5vae train`: small enough to train in minutes on a 2-core CPU.
DEFAULT_T5 = T5Config(vocab_size=1024, d_model=128, d_kv=32, d_ff=512, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=32, relative_attention_max_distance=64, dropout_rate=0.0,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@dataclasses.dataclass(frozen=True)
class Config:
    """A T5-VAE: a T5 backbone plus the bottleneck between its encoder and decoder (hashable, jit-static).

    ``pooling``: "mean" (masked average of N contiguous segments), "first" (first N positions) or
    "attention" (N learned queries). MMD uses the RBF kernel ``exp(-||x - y||^2 / mmd_bandwidth)``;
    ``mmd_bandwidth=None`` means ``latent_size**2``, as in the original T5-VAE-Flax. The MMD weight is
    ``sigmoid(mmd_k * step - mmd_b)``; ``max_length`` bounds tokenized lines (EOS included).
    ``latent_noise`` is the standard deviation of Gaussian noise added, in training only, to the codes the
    decoder reconstructs from (the MMD sees the clean codes): the decoder must then decode a neighbourhood
    of each code, not a point, which is what makes the space between codes decodable.
    ``latent_dropout`` is the probability, in training only, that the decoder's cross-attention loses each
    latent token (at least one is kept): the decoder must then fill in the missing part of a line itself.
    """

    t5: T5Config = DEFAULT_T5
    n_latent_tokens: int = 8
    latent_size: int = 32
    pooling: str = "mean"
    mmd_bandwidth: float | None = None
    mmd_unbiased: bool = False
    mmd_k: float = 0.0025
    mmd_b: float = 6.25
    latent_noise: float = 0.0
    latent_dropout: float = 0.1
    max_length: int = 48

    def __post_init__(self):
        if isinstance(self.t5, dict):
            object.__setattr__(self, "t5", T5Config.from_hf_dict(self.t5))
        for name in ("n_latent_tokens", "latent_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Config.{name} must be a positive int, got {value!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"Config.pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        if not (isinstance(self.latent_noise, (int, float)) and 0.0 <= self.latent_noise < float("inf")):
            raise ValueError(f"Config.latent_noise must be a finite number >= 0, got {self.latent_noise!r}")
        if not (isinstance(self.latent_dropout, (int, float)) and 0.0 <= self.latent_dropout < 1.0):
            raise ValueError(f"Config.latent_dropout must be a probability in [0, 1), got {self.latent_dropout!r}")
        if self.mmd_bandwidth is not None and not self.mmd_bandwidth > 0:
            raise ValueError(f"Config.mmd_bandwidth must be positive (or None), got {self.mmd_bandwidth!r}")

    @property
    def bandwidth(self) -> float:
        return float(self.mmd_bandwidth if self.mmd_bandwidth is not None else self.latent_size ** 2)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "t5"}
        d["t5"] = dataclasses.asdict(self.t5)
        return d

    @classmethod
    def from_dict(cls, d: dict, **overrides: Any) -> "Config":
        """Inverse of :meth:`to_dict`; unknown keys raise, so a typo in a config file is never silent."""
        d = {**d, **overrides}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown Config field(s) {unknown}; known: {sorted(names)}")
        t5 = d.get("t5", DEFAULT_T5)
        if isinstance(t5, dict):
            t5_names = {f.name for f in dataclasses.fields(T5Config)}
            bad = sorted(set(t5) - t5_names)
            if bad:
                raise ValueError(f"unknown T5Config field(s) {bad}")
            t5 = T5Config(**t5)
        return cls(**{**d, "t5": t5})

    def save_json(self, path: str | os.PathLike) -> None:
        write_json_object(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | os.PathLike, **overrides: Any) -> "Config":
        return cls.from_dict(read_json_object(path), **overrides)
