"""Learned verifiers: `llm_judge` (a rubric scored by a model) and `reward_model` (a trained RM)."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, Field

from halo_pipeline.verifiers import VerifierSettings, VerifyResult, register_verifier

DEFAULT_TEMPLATE = (
    "You are a strict grader. Rubric: {rubric}\n\n"
    "Task:\n{prompt}\n\nResponse:\n{completion}\n\n"
    "Grade the response against the rubric. Reply with one line: `Score: N` where N is an integer from 0 to {max_score}."
)
SCORE = re.compile(r"(?:score|rating|grade)\s*(?:is|:|=)?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)


class JudgeSettings(VerifierSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)  # hashable: one loaded judge per settings
    rubric: str = Field("Is the response correct, complete and helpful?", description="What the judge grades.")
    template: str = Field(
        DEFAULT_TEMPLATE, description="Judge prompt; fields {rubric} {prompt} {completion} {max_score} and the sample's own."
    )
    max_score: int = Field(10, ge=1, description="Top of the judge's scale; reward = score / max_score.")
    pass_threshold: float = Field(0.7, ge=0, le=1, description="Reward at or above which a sample counts as passed.")
    model: str | None = Field(None, description="Local judge model reference (catalog name, GGUF file, HF directory).")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint of the judge (instead of a local model).")
    endpoint_model: str = Field("default", description="Model name sent to the endpoint.")
    api_key_env: str | None = Field(None, description="Env var holding the endpoint's API key (never the key itself).")
    max_tokens: int = Field(32, ge=1, description="Tokens the judge may write.")
    temperature: float = Field(0.0, ge=0, le=2, description="Judge sampling temperature (0: greedy).")


def _check_judge(settings: JudgeSettings) -> list[str]:
    if settings.base_url is None and settings.model is None:
        return ["llm_judge needs `model:` (a local judge) or `base_url:` (an OpenAI-compatible endpoint)"]
    if settings.base_url is None:
        from halo_pipeline.runtimes.catalog import check_reference

        return check_reference(settings.model)
    return []


def parse_score(reply: str, max_score: int) -> float | None:
    """The judge's score in [0, 1]: `Score: 7`, `7/10`, `**Rating:** 4 / 5`, or a reply that is just a number."""
    match = SCORE.search(reply)
    if match:
        value, scale = float(match.group(1)), float(match.group(2) or max_score)
    else:
        bare = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?\s*\.?\s*", reply)
        if not bare:
            return None
        value, scale = float(bare.group(1)), float(bare.group(2) or max_score)
    if scale <= 0 or value > scale:
        return None
    return value / scale


@register_verifier("llm_judge", JudgeSettings, check=_check_judge)
def llm_judge(settings: JudgeSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """A judge model grades the completion against `rubric` on 0..max_score; reward = score / max_score.
    A reply without a parseable score is an error with the reply in `details`, never a silent zero."""
    fields = {**{k: v for k, v in sample.items() if isinstance(v, str | int | float)}}
    fields.update(rubric=settings.rubric, max_score=settings.max_score)
    fields.setdefault("prompt", "")
    fields.setdefault("completion", "")
    try:
        prompt = settings.template.format(**fields)
    except KeyError as exc:
        return VerifyResult(0.0, False, {}, f"template field {exc} is not in the sample")
    reply = _judge(settings)(prompt)
    score = parse_score(reply, settings.max_score)
    if score is None:
        return VerifyResult(0.0, False, {"reply": reply[:500]}, "the judge's reply has no score")
    return VerifyResult(score, True, {"reply": reply[:500], "score": round(score * settings.max_score, 3)})


@functools.lru_cache(maxsize=4)
def _judge(settings: JudgeSettings):
    """One loaded judge per settings (local models stay in memory; calls are serialized for them)."""
    from halo_pipeline.runtimes import Sampling, teacher

    generate = teacher(
        settings.model, None, base_url=settings.base_url, endpoint_model=settings.endpoint_model, api_key_env=settings.api_key_env,
        concurrency=1,
    ).generate  # fmt: skip
    sampling = Sampling(n=1, temperature=settings.temperature, top_p=1.0, max_new_tokens=settings.max_tokens, seed=0)
    lock = threading.Lock()

    def ask(prompt: str) -> str:
        with lock if settings.base_url is None else _NoLock():
            texts, _ = generate([[{"role": "user", "content": prompt}]], sampling)
        return texts[0][0]

    return ask


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class RewardModelSettings(VerifierSettings):
    model: str | None = Field(
        None, description="Reward model directory: what a `train` step with algorithm=rm writes (an adapter on its base, or a whole model)."
    )
    scale: float = Field(1.0, gt=0, description="reward = sigmoid(score / scale).")
    max_length: int = Field(1024, ge=8, description="Tokens of prompt + completion scored (longer inputs are truncated).")
    pass_threshold: float = Field(0.5, ge=0, le=1, description="Reward at or above which a sample counts as passed.")


def _check_rm(settings: RewardModelSettings) -> list[str]:
    from pathlib import Path

    if settings.model is None:
        return ["reward_model needs `model:`, the directory a train step with algorithm=rm wrote (e.g. verifier.model=PATH)"]
    from halo_pipeline.runtimes.formats import adapter_base_ref, is_adapter

    path = Path(settings.model)
    if is_adapter(path):
        if not adapter_base_ref(path):
            return [f"reward model '{settings.model}' is an adapter that does not say which base model it was trained on"]
        return []
    if not (path / "config.json").is_file():
        return [
            f"reward model '{settings.model}' is not a model directory (no config.json) nor an adapter (no adapter_config.json); "
            "train one with algorithm=rm"
        ]
    return []


@register_verifier("reward_model", RewardModelSettings, check=_check_rm)
def reward_model(settings: RewardModelSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """A Bradley-Terry reward model (from `train` with algorithm=rm) scores prompt + completion;
    reward = sigmoid(score / scale), so 0.5 is the model's indifference point."""
    import math

    import torch

    if settings.model is None:
        return VerifyResult(0.0, False, {}, "reward_model has no `model:` set")
    model, tokenizer, lock = _reward_model(settings.model)
    messages = [
        {"role": "user", "content": str(sample.get("prompt", ""))},
        {"role": "assistant", "content": str(sample.get("completion", ""))},
    ]
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    else:
        text = f"{messages[0]['content']}\n{messages[1]['content']}"
    inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=settings.max_length)
    with lock, torch.no_grad():
        score = float(model(**inputs).logits[0, 0])
    reward = 1.0 / (1.0 + math.exp(-score / settings.scale))
    return VerifyResult(reward, True, {"score": round(score, 4)})


@functools.lru_cache(maxsize=2)
def _reward_model(path: str):
    """The scoring model: a whole directory, or (what algorithm=rm writes with LoRA) its adapter and score head merged
    into the base it records, once per process."""
    from pathlib import Path

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from halo_pipeline.runtimes.formats import adapter_base_ref, is_adapter, recorded_base_fingerprint

    tokenizer = AutoTokenizer.from_pretrained(path)
    if is_adapter(Path(path)):
        from peft import PeftModel

        from halo_pipeline.runtimes.catalog import fingerprint, resolve

        ref = adapter_base_ref(Path(path))
        recorded = recorded_base_fingerprint(Path(path))
        if recorded is not None and recorded != fingerprint(ref):  # an adapter on another base scores nonsense
            named = ref.get("name", ref) if isinstance(ref, dict) else ref
            raise ValueError(f"reward model {path}: its base model '{named}' is not the one it was trained on; train it again")
        base = AutoModelForSequenceClassification.from_pretrained(resolve(ref), num_labels=1)
        model = PeftModel.from_pretrained(base, path).merge_and_unload().eval()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model, tokenizer, threading.Lock()
