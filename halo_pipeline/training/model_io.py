"""The model side of a torch training run, shared by every algorithm: load the base (and an `init` adapter),
tell whether the weights changed, and save the result with its provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from halo_pipeline.training.distributed import world_size
from halo_pipeline.training.params import TrainingParams
from halo_pipeline.training.tokenization import load_tokenizer


def load(params: TrainingParams, for_reward_model: bool = False, tokenizer: Any = None) -> tuple[Any, Any]:
    """The base model (a sequence classifier with one label for a reward model) and its tokenizer (loaded here
    unless given)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from halo_pipeline.runtimes.catalog import resolve

    path = resolve(params.model)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(params)  # the one `preview` shows the examples with
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if params.backend.attention:
        kwargs["attn_implementation"] = params.backend.attention
    if params.adapter == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
        if world_size() > 1:  # each rank quantizes its own copy onto its own GPU
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    torch.manual_seed(params.seed)
    if for_reward_model:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model, tokenizer


def continue_adapter(model: Any, init: Path) -> Any:
    """The base with the `init` adapter loaded trainable: training continues its weights (an SFT warm-up
    before GRPO, say). TRL then uses the base with the adapter disabled as its DPO/GRPO reference."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(init), is_trainable=True)


def snapshot(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def changed(before: dict[str, Any], model: Any, full: dict[str, Any] | None = None) -> bool:
    after = full if full is not None else dict(model.named_parameters())  # sharded: the gathered state dict
    return any(n in after and not bool((after[n].detach().cpu() == t.cpu()).all()) for n, t in before.items())


def quiet(trainer: Any) -> None:
    """Metrics go to metrics.jsonl and the engine's progress, not as dicts printed to stdout."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def save(
    params: TrainingParams, model: Any, tokenizer: Any, out: Path, state_dict: dict[str, Any] | None = None, reward_model: bool = False
) -> None:
    """The trained adapter (or model) with its tokenizer and provenance. A reward model's adapter holds its score
    head too (PEFT's modules_to_save); the `reward_model` verifier merges it into the base when it loads it, so the
    step writes megabytes, not the whole model."""
    from halo_pipeline.runtimes.catalog import fingerprint, stable_adapter_config

    model.save_pretrained(out, **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(out)
    stable_adapter_config(out)
    provenance = {
        "base": params.model.model_dump(exclude_none=True),
        "base_fingerprint": fingerprint(params.model),
        "algorithm": params.algorithm.model_dump(),
        "adapter": params.adapter,
        "kind": "adapter" if params.adapter != "none" else "model",
        **({"task": "reward_model"} if reward_model else {}),
    }
    (out / "halo_provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
