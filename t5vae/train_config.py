"""A training run's settings (``TrainConfig``): everything about a run that is not the model.

Kept apart from the model's configs (t5vae.config) because what it leaves unset follows the corpus's
language (t5vae.names), which the model's shape never does; JSON in/out is config's ``Settings`` base."""

from __future__ import annotations

import dataclasses
from typing import Any

from t5vae.config import Settings, check_fields, is_int, is_number, is_positive
from t5vae.names import LANGUAGES, corpus_language

OPTIMIZERS = ("adamw", "adafactor")
PIPELINES = ("memory", "grain")


# What a TrainConfig leaves unset follows the corpus's language: code lines (the embedded corpus: statements
# of 10-80 characters, names renamed so the model learns to carry names it never saw) or English sentences
# (the prose corpus's 5-25 words fit 20-200 characters; renaming is for code). A 2,048-piece vocabulary
# did no better than 1,024 on prose at 500 steps (docs/corpora.md), so both use 1,024.
LANGUAGE_DEFAULTS = {
    "code": {"min_chars": 10, "max_chars": 80, "rename_prob": 0.8, "vocab_size": 1024},
    "prose": {"min_chars": 20, "max_chars": 200, "rename_prob": 0.0, "vocab_size": 1024},
}
# The backbone settings that `t5vae train` also takes from the language when neither a flag nor --config sets
# them. The prose corpus is small for the budget: on Python's text alone (15k sentences) the default model
# without dropout overfit it within 18 minutes, and dropout 0.1 raised BLEU-4 on held-out English from 0.32
# to 0.43; with WordNet's examples (44k) training batches still reach token accuracy 0.82 against 0.67 on
# validation sentences (docs/results.md).
LANGUAGE_T5_DEFAULTS = {"code": {"dropout_rate": 0.0}, "prose": {"dropout_rate": 0.1}}
# The bottleneck settings that `t5vae train` takes from the language in the same way. Config's own defaults
# are code's: a code 64 wide, decoded in training from part way toward another line's code (latent_mix 0.2),
# raised both exact match and the interior points that parse on held-out code in 18 minutes (issue 30's
# ablation, docs/results.md). The prose default was measured with the 32-wide code and no mixing, and keeps
# them.
LANGUAGE_MODEL_DEFAULTS = {
    "code": {"latent_size": 64, "latent_mix": 0.2},
    "prose": {"latent_size": 32, "latent_mix": 0.0},
}


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """Everything about a training run that is not the model (see :class:`Config`)."""

    steps: int = 20000
    batch_size: int = 64
    optimizer: str = "adamw"  # or "adafactor" (T5's); benchmarks/NOTES.md compares them
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    end_lr_fraction: float = 0.05  # cosine decay to learning_rate * end_lr_fraction
    weight_decay: float = 0.0  # AdamW only
    clip_norm: float = 1.0
    seed: int = 0
    corpus: str | None = None  # None/"stdlib", "prose", "py:...", "tfds:NAME[:FIELD]" or text files
    # None: by the corpus's language (LANGUAGE_DEFAULTS), which is "prose" for the prose corpus, else "code"
    language: str | None = None
    min_chars: int | None = None  # line length bounds, characters
    max_chars: int | None = None
    validation_percent: float = 2.0
    tokenizer: str | None = None  # a spiece.model; None trains one on the corpus
    vocab_size: int | None = None  # for a trained tokenizer
    rename_prob: float | None = (
        None  # per epoch, the chance a training line's names are renamed (t5vae.augment)
    )
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    max_minutes: float | None = 18.0  # training time budget: the lr schedule follows max(step/steps, time
    # used/budget) and training stops (checkpointed) when it is spent
    eval_pairs: int = 400  # interpolation pairs of the final evaluation, 9 interior points each
    eval_batch_size: int = 128
    eval_every: int = 2000  # steps between learning-curve evaluations (eval_curve.jsonl); 0: none
    pipeline: str = "memory"  # "memory": the corpus encoded in host memory (data.BatchStream); "grain":
    # streamed from array_record by grain (t5vae.pipeline, docs/pipeline.md)
    pipeline_workers: int = 0  # grain worker processes (0: in the training process)

    def __post_init__(self):
        language = self.language or corpus_language(self.corpus)
        if language not in LANGUAGES:
            raise ValueError(f"TrainConfig.language must be one of {list(LANGUAGES)}, got {self.language!r}")
        object.__setattr__(self, "language", language)
        for name, value in LANGUAGE_DEFAULTS[language].items():  # the settings left to the language
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"TrainConfig.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        for name in (
            "steps",
            "batch_size",
            "checkpoint_every",
            "log_every",
            "vocab_size",
            "keep_checkpoints",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"TrainConfig.pipeline must be one of {list(PIPELINES)}, got {self.pipeline!r}")
        for name in ("eval_every", "eval_pairs", "warmup_steps", "seed", "min_chars", "pipeline_workers"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.seed >= 2**32:
            raise ValueError(f"TrainConfig.seed must be below 2**32, got {self.seed!r}")
        if not is_int(self.eval_batch_size) or self.eval_batch_size <= 0:
            raise ValueError(
                f"TrainConfig.eval_batch_size must be a positive int, got {self.eval_batch_size!r}"
            )
        if not is_int(self.max_chars) or self.max_chars < max(self.min_chars, 1):
            raise ValueError(
                f"TrainConfig.max_chars must be an int >= min_chars ({self.min_chars}), "
                f"got {self.max_chars!r}"
            )
        for name in ("learning_rate", "clip_norm"):
            if not is_positive(getattr(self, name)):
                raise ValueError(
                    f"TrainConfig.{name} must be a finite number > 0, got {getattr(self, name)!r}"
                )
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(
                f"TrainConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        if not is_number(self.rename_prob) or not 0 <= self.rename_prob <= 1:
            raise ValueError(
                f"TrainConfig.rename_prob must be a probability in [0, 1], got {self.rename_prob!r}"
            )
        if not is_number(self.end_lr_fraction) or not 0 <= self.end_lr_fraction <= 1:
            raise ValueError(f"TrainConfig.end_lr_fraction must be in [0, 1], got {self.end_lr_fraction!r}")
        if not is_number(self.validation_percent) or not 0 < self.validation_percent < 100:
            raise ValueError(
                f"TrainConfig.validation_percent must be above 0 and below 100 (some lines are "
                f"needed for each split), got {self.validation_percent!r}"
            )
        if self.max_minutes is not None and not is_positive(self.max_minutes):
            raise ValueError(
                f"TrainConfig.max_minutes must be a finite number > 0 or None (no time budget), "
                f"got {self.max_minutes!r}"
            )

    @classmethod
    def from_dict(cls, d: dict, **overrides: Any) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        d = {**d, **overrides}
        check_fields(cls, d)
        return cls(**d)
