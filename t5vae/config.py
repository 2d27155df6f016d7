"""Model configuration: frozen dataclasses, presets, and Hugging Face ``config.json`` in/out.

The training run's settings (``TrainConfig``) build on the same base in t5vae.train_config."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from t5vae import files

_ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")

# What the backward pass keeps of each scanned layer (jax.checkpoint's policy); the rest is recomputed.
#   "dots": the outputs of the 2-D projection dots; norms, softmax, dropout and the small batched
#           attention dots are recomputed. "full": only each layer's input (least memory). "none":
#           everything autodiff saves.
REMAT = ("dots", "full", "none")
FLOAT_DTYPES = ("float32", "bfloat16", "float16")  # compute and storage dtypes a T5Config accepts
# The platform switch (t5vae.kernels): "auto" (what was measured faster on the running backend), "plain"
# (the model as written in layers.py), "cpu" (the CPU's fast paths, CPU_PATHS), or FAST_PATHS names joined
# by "+". "dpa": attention through jax.nn.dot_product_attention (cuDNN's fused kernel on a GPU in bf16/f16).
KERNELS = ("auto", "plain", "cpu")
CPU_PATHS = ("dropout", "mlp", "xent", "decoder_layout")
FAST_PATHS = CPU_PATHS + ("dpa",)
_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "kernels")


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file that must hold an object; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a JSON text file (it is not UTF-8: binary?)") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a JSON file") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(d).__name__}")
    return d


def write_json_object(path: str | os.PathLike, d: dict) -> None:
    """The inverse of :func:`read_json_object`: indented, keys sorted, a final newline, written atomically."""
    files.write_json(path, d)


# The checks a config's __post_init__ makes of a JSON value (a bool is not a number here: True is not 1 step).
def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_positive(x) -> bool:
    return is_number(x) and x > 0


class Settings:
    """What the three configs (these two, and train_config.TrainConfig) share: ``replace``, and JSON
    read/write through ``to_dict`` / ``from_dict``."""

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save_json(self, path: str | os.PathLike) -> None:
        write_json_object(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | os.PathLike, **overrides: Any):
        return cls.from_dict(read_json_object(path), **overrides)


def check_fields(cls, d: dict) -> None:
    """A key of ``d`` that is not a field of ``cls`` raises, naming it."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")


@dataclasses.dataclass(frozen=True)
class T5Config(Settings):
    """A T5 encoder-decoder. Field names follow Hugging Face's ``T5Config``; hashable, so jit can close over it.

    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype of the parameters. ``remat`` is what the
    backward pass keeps of each scanned layer's forward (see ``REMAT``), ``kernels`` which fast paths run
    (see ``KERNELS``, t5vae.kernels); both change memory and speed, not the numbers. These four are run-time
    choices: they are not written to a Hugging Face ``config.json``.

    ``relative_attention_per_layer`` (not a Hugging Face field): one relative-position table per layer, as
    scanned T5X / flaxformer checkpoints hold them, instead of one per stack shared by its layers.
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
    relative_attention_per_layer: bool = False
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
    kernels: str = "auto"

    def __post_init__(self):
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        for name in (
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_decoder_layers",
            "num_heads",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"T5Config.{name} must be a positive int, got {value!r}")
        if not isinstance(self.relative_attention_per_layer, bool):
            raise ValueError(
                "T5Config.relative_attention_per_layer must be true or false, got "
                f"{self.relative_attention_per_layer!r}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        self.activation  # validates feed_forward_proj
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in FLOAT_DTYPES:
                raise ValueError(
                    f"T5Config.{name} must be float32, bfloat16 or float16, got {getattr(self, name)!r}"
                )
        if self.remat not in REMAT:
            raise ValueError(f"T5Config.remat must be one of {list(REMAT)}, got {self.remat!r}")
        if self.kernels not in KERNELS and not (
            isinstance(self.kernels, str) and set(self.kernels.split("+")) <= set(FAST_PATHS)
        ):
            raise ValueError(
                f"T5Config.kernels must be one of {list(KERNELS)} or fast paths from "
                f"{list(FAST_PATHS)} joined by '+', got {self.kernels!r}"
            )

    @property
    def activation(self) -> str:
        """The FFN nonlinearity; ``gated-gelu`` means the tanh approximation (``gelu_new``), as in the reference."""
        parts = self.feed_forward_proj.split("-")
        act = parts[-1]
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or act not in _ACTIVATIONS:
            raise ValueError(
                f"T5Config.feed_forward_proj={self.feed_forward_proj!r} is not one of "
                f"{list(_ACTIVATIONS)} optionally prefixed by 'gated-'"
            )
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    # -- Hugging Face config.json ------------------------------------------------------------------
    def to_hf_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _RUNTIME_FIELDS}
        d.update(
            model_type="t5",
            architectures=["T5ForConditionalGeneration"],
            is_encoder_decoder=True,
            torch_dtype=self.param_dtype,
        )
        return d

    @classmethod
    def from_dict(cls, d: dict, *, hf: bool = False, **overrides: Any) -> "T5Config":
        """The one way from a dict to a T5Config; ``overrides`` win over ``d``.

        The project's own files (``hf=False``): every key must be a field, so a typo raises naming it. A
        Hugging Face ``config.json`` (``hf=True``) carries keys T5 has no use for (``architectures``,
        ``task_specific_params``, ...): those are ignored, its ``torch_dtype`` becomes ``param_dtype``, and
        the run-time fields are never read from it.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if hf:
            if d.get("model_type", "t5") not in ("t5", "mt5", "umt5"):
                raise ValueError(
                    f"config.json has model_type={d.get('model_type')!r}; only T5 and mT5 are supported"
                )
            kwargs = {k: v for k, v in d.items() if k in names - set(_RUNTIME_FIELDS)}
            if d.get("torch_dtype") in FLOAT_DTYPES:
                kwargs["param_dtype"] = d["torch_dtype"]
        else:
            check_fields(cls, d)
            kwargs = dict(d)
        return cls(**{**kwargs, **overrides})

    def save_json(self, path: str | os.PathLike) -> None:
        """A Hugging Face style ``config.json`` (what ``python -m weights_convert`` writes)."""
        write_json_object(path, self.to_hf_dict())

    @classmethod
    def load_json(cls, path: str | os.PathLike, **overrides: Any) -> "T5Config":
        """Read a Hugging Face style ``config.json`` (``from_dict(..., hf=True)``)."""
        return cls.from_dict(read_json_object(path), hf=True, **overrides)


PRESETS: dict[str, T5Config] = {
    # v1.0: relu FFN, tied embeddings (output scaled by d_model**-0.5)
    "t5-small": T5Config(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": T5Config(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
    "t5-large": T5Config(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
    # v1.1 / Flan-T5: gated-gelu, untied lm_head
    "t5-v1_1-small": T5Config(
        d_model=512,
        d_kv=64,
        d_ff=1024,
        num_layers=8,
        num_heads=6,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    "t5-v1_1-base": T5Config(
        d_model=768,
        d_kv=64,
        d_ff=2048,
        num_layers=12,
        num_heads=12,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    "flan-t5-small": T5Config(
        d_model=512,
        d_kv=64,
        d_ff=1024,
        num_layers=8,
        num_heads=6,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    "flan-t5-base": T5Config(
        d_model=768,
        d_kv=64,
        d_ff=2048,
        num_layers=12,
        num_heads=12,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    # for tests and quick experiments
    "tiny": T5Config(
        vocab_size=128,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    ),
}


def preset(name: str, **overrides: Any) -> T5Config:
    """A named T5 shape (``t5-small``, ``flan-t5-base``, ``tiny``…) with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown T5 preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


# -- the T5-VAE ------------------------------------------------------------------------------------

POOLINGS = ("mean", "first", "attention")

# The default backbone of `t5vae train`: small enough to train in minutes on a 2-core CPU.
DEFAULT_T5 = T5Config(
    vocab_size=1024,
    d_model=128,
    d_kv=32,
    d_ff=512,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=64,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    """A T5-VAE: a T5 backbone plus the bottleneck between its encoder and decoder (hashable, jit-static).

    ``pooling``: "mean" (masked average of N contiguous segments), "first" (first N positions) or
    "attention" (N learned queries). MMD uses the RBF kernel ``exp(-||x - y||^2 / mmd_bandwidth)``;
    ``mmd_bandwidth=None`` means ``latent_size**2``, as in the original T5-VAE-Flax. The MMD weight is
    ``sigmoid(mmd_k * step - mmd_b)``; ``max_length`` bounds tokenized lines (EOS included).
    ``latent_noise`` is the standard deviation of Gaussian noise added, in training only, to the codes the
    decoder reconstructs from (the MMD sees the clean codes): the decoder must then decode a neighbourhood
    of each code, not a point, which is what makes the space between codes decodable (the default: see the
    ablation in docs/results.md).
    ``latent_dropout`` is the probability, in training only, that the decoder's cross-attention loses each
    latent token (at least one is kept): the decoder must then fill in the missing part of a line itself.
    ``latent_mix`` moves, in training only, each code the decoder reconstructs from a uniform random fraction
    of at most ``latent_mix`` of the way toward another line's code in the batch, and the target stays the
    line itself: noise along the directions that interpolation paths travel, where ``latent_noise`` is
    isotropic. 0 turns it off.
    ``input_deletion`` deletes, in training only, each token of the encoder's input but EOS with this
    probability (the decoder still reconstructs the whole line): a denoising autoencoder, which maps lines
    that differ by a few tokens to nearby codes. 0 turns it off.
    """

    t5: T5Config = DEFAULT_T5
    n_latent_tokens: int = 8
    latent_size: int = 64
    pooling: str = "mean"
    mmd_bandwidth: float | None = None
    mmd_unbiased: bool = False
    mmd_k: float = 0.0025
    mmd_b: float = 6.25
    latent_noise: float = 0.1
    latent_dropout: float = 0.1
    latent_mix: float = 0.2
    input_deletion: float = 0.0
    max_length: int = 64

    def __post_init__(self):
        if isinstance(self.t5, dict):
            object.__setattr__(self, "t5", T5Config.from_dict(self.t5))
        for name in ("n_latent_tokens", "latent_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Config.{name} must be a positive int, got {value!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"Config.pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        if not (isinstance(self.latent_noise, (int, float)) and 0.0 <= self.latent_noise < float("inf")):
            raise ValueError(f"Config.latent_noise must be a finite number >= 0, got {self.latent_noise!r}")
        if not (isinstance(self.latent_dropout, (int, float)) and 0.0 <= self.latent_dropout < 1.0):
            raise ValueError(
                f"Config.latent_dropout must be a probability in [0, 1), got {self.latent_dropout!r}"
            )
        if not (isinstance(self.latent_mix, (int, float)) and 0.0 <= self.latent_mix <= 0.5):
            raise ValueError(
                f"Config.latent_mix must be a fraction in [0, 0.5] (past half way a code is nearer the other "
                f"line's), got {self.latent_mix!r}"
            )
        if not (isinstance(self.input_deletion, (int, float)) and 0.0 <= self.input_deletion < 1.0):
            raise ValueError(
                f"Config.input_deletion must be a probability in [0, 1), got {self.input_deletion!r}"
            )
        if self.mmd_bandwidth is not None and not self.mmd_bandwidth > 0:
            raise ValueError(f"Config.mmd_bandwidth must be positive (or None), got {self.mmd_bandwidth!r}")

    @property
    def bandwidth(self) -> float:
        return float(self.mmd_bandwidth if self.mmd_bandwidth is not None else self.latent_size**2)

    @classmethod
    def from_dict(cls, d: dict, **overrides: Any) -> "Config":
        """Inverse of :meth:`to_dict`; unknown keys raise (here and in "t5"), so a typo is never silent."""
        d = {**d, **overrides}
        check_fields(cls, d)
        t5 = d.get("t5", DEFAULT_T5)
        return cls(**{**d, "t5": T5Config.from_dict(t5) if isinstance(t5, dict) else t5})
