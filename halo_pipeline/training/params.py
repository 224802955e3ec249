"""What the train step gives the training library: its params (`TrainingParams`), the fields every algorithm's
settings have (`Settings`), and the dataset checks' thresholds (`DataChecks`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from halo_pipeline.data import refs, sources
from halo_pipeline.engine.groups import Backend, ModelRef, VerifierSpec
from halo_pipeline.engine.step import Params
from halo_pipeline.training.distributed import Distributed


class Settings(BaseModel):
    """The fields every algorithm has; each module's settings add their own and fix `name` to the file name."""

    model_config = ConfigDict(extra="forbid")
    name: str
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(1, gt=0, description="Passes over the dataset (max_steps wins when set).")
    batch_size: int = Field(4, ge=1, description="Per-device batch size.")


class DataChecks(BaseModel):
    """Thresholds on the training dataset, checked before training (docs/training.md#dataset-checks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    on_fail: Literal["stop", "warn", "off"] = Field(
        "stop", description="stop: the step fails before training, naming each check; warn: record and train; off: no checks."
    )
    max_truncated: float = Field(0.5, ge=0, le=1, description="Largest share of examples longer than max_length (they are cut).")
    max_dropped: float = Field(
        0.5, ge=0, le=1, description="Largest share of examples the trainer drops (nothing left to train on after truncation)."
    )
    max_empty: float = Field(0.5, ge=0, le=1, description="Largest share of rows with an empty prompt, completion, side or turn.")
    max_duplicate_prompts: float | None = Field(
        None, ge=0, le=1, description="Largest share of rows whose prompt repeats an earlier row's (several samples per prompt are normal)."
    )
    min_tokens: int | None = Field(None, ge=1, description="Smallest median example length, in tokens.")
    max_tokens: int | None = Field(None, ge=1, description="Largest 99th-percentile example length, in tokens.")
    max_identical_pairs: float = Field(
        0.5, ge=0, le=1, description="preference pairs: largest share of pairs whose two sides are the same text."
    )
    max_inverted_pairs: float | None = Field(
        None, ge=0, le=1, description="preference pairs: largest share of pairs whose recorded rewards rank the rejected side higher."
    )
    min_chosen_longer: float | None = Field(
        None, ge=0, le=1, description="preference pairs: smallest share of pairs whose chosen side is the longer."
    )
    max_chosen_longer: float | None = Field(
        None,
        ge=0,
        le=1,
        description="preference pairs: largest share of pairs whose chosen side is the longer (a reward for length alone).",
    )


class Reward(BaseModel):
    """One of GRPO's reward functions: a verifier and its weight in the sum."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    verifier: VerifierSpec = Field(..., description="A verifier node: a name (`math`) or `{name: ..., settings}`, like `verifier`.")
    weight: float = Field(1.0, description="Its weight in the reward (TRL's reward_weights; negative: a penalty).")


class TrainingParams(Params):
    """The train step's params, as the training library reads them (the step's `TrainParams` narrows `algorithm`
    to the union of every algorithm module's settings)."""

    model: ModelRef = Field(default_factory=lambda: ModelRef.model_validate("tiny"), description="Base model (usually `${model}`).")
    backend: Backend = Field(default_factory=Backend, description="Device and precision (usually `${backend}`).")
    algorithm: Settings = Field(default_factory=lambda: Settings(name="sft"), description="Algorithm node (usually `${algorithm}`).")
    verifier: VerifierSpec | None = Field(None, description="Reward for grpo/raft (usually `${verifier}`).")
    rewards: list[Reward] = Field(
        default_factory=list,
        description="grpo: several verifiers, each a reward function of its own with its weight, its mean logged and "
        "plotted (TRL's reward_funcs + reward_weights); replaces `verifier` as the reward.",
    )
    adapter: Literal["lora", "dora", "rslora", "pissa", "qlora", "none"] = Field(
        "lora", description="PEFT method, or none (full fine-tuning)."
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: str | list[str] = Field("all-linear", description="Modules that get adapters (`all-linear` or names).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (overrides the algorithm's epochs).")
    max_length: int = Field(512, ge=16, description="Longest tokenized example (longer ones are truncated).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field("linear", description="LR schedule.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    seed: int = Field(0, description="Seed for init, data order and sampling.")
    logging_steps: int = Field(1, ge=1, description="Log metrics every N steps.")
    save_every: int = Field(50, ge=1, description="Checkpoint every N steps (a killed run resumes from the last one).")
    use_chat_template: bool = Field(True, description="Train through the tokenizer's chat template (when it has one).")
    probe_every: int | None = Field(
        None, ge=1, description="Probe held-out tasks every N steps (and before the first), logged with the curves."
    )
    probe_source: str = Field(
        "humaneval:test",
        description="Tasks of the mid-training probe: humaneval:test (the held-out split), hf:<id>[:<config>][:<split>] or file:<path>.",
    )
    probe_limit: int = Field(8, ge=1, description="Tasks per mid-training probe.")
    probe_max_new_tokens: int = Field(64, ge=1, description="Tokens per probe completion.")
    probe_verifier: VerifierSpec | None = Field(None, description="Scores the probe (default: `verifier`).")
    system_prompt: str | None = Field(None, description="System message before each prompt.")
    columns: dict[str, str] = Field(default_factory=dict, description=sources.COLUMNS_HELP)
    data_checks: DataChecks = Field(
        default_factory=DataChecks,
        description="Thresholds on the dataset as the trainer prepares it, checked before training (docs/training.md#dataset-checks).",
    )
    distributed: Distributed = Field(
        default_factory=lambda: Distributed(name="single"),
        description="Ranks, machines and strategy (ddp, fsdp, deepspeed) of multi-process training (docs/training.md).",
    )

    @field_validator("probe_source")
    @classmethod
    def _probe_source_parses(cls, value: str) -> str:
        refs.parse(value, paths=False)  # a malformed reference or an unknown split: reported at its key, with a did-you-mean
        return value
