"""HF models with transformers on torch: loaded on the backend's device in its dtype, an optional PEFT
adapter merged in, batched generation with left padding, log-probs, greedy decoding, chat templates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from halo_pipeline.runtimes import Messages, Sampling, log_softmax
from halo_pipeline.runtimes.constraints import Constraint, Grammars, Guide, ResponseFormat


def load_causal_lm(path: Path, device: str = "cpu", dtype: str = "float32", adapter: Path | None = None) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer with a pad token): the one place transformers loads a model to run it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    if adapter is not None:  # a PEFT adapter on this base, merged for plain-speed generation
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model.to(device).eval(), tokenizer  # type: ignore[arg-type]


def load_with_adapters(path: Path, adapters: dict[str, Path], device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) with PEFT adapters loaded by name and left unmerged, so one model serves the base and
    each adapter (peft's mixed-batch forward: `adapter_names=[...]` per row, "__base__" for the base)."""
    model, tokenizer = load_causal_lm(path, device, dtype)
    if not adapters:
        return model, tokenizer
    from peft import PeftModel

    names = list(adapters)
    model = PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    return model.to(device).eval(), tokenizer


class HFRuntime:
    name = "transformers"
    format = "hf"

    def __init__(
        self, path: Path, device: str = "cpu", dtype: str = "float32", adapter: Path | None = None, use_chat_template: bool = True
    ) -> None:
        import torch

        self.torch = torch
        self.model, self.tokenizer = load_causal_lm(path, device, dtype, adapter)
        self.device = device
        self.use_chat_template = use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        self.grammars = Grammars(self)

    # -- the questions every runtime answers
    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def bos_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def detokenize(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def logprobs(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor([ids], device=self.device)).logits[0].float().cpu().numpy()
        return log_softmax(logits)

    def greedy(self, ids: list[int], n: int, guide: Guide | None = None) -> list[int]:
        torch = self.torch
        out: list[int] = []
        with torch.no_grad():
            step = self.model(torch.tensor([ids], device=self.device), use_cache=True)
            for _ in range(n):
                if guide is None:
                    out.append(int(step.logits[0, -1].argmax()))
                elif (token := guide.pick(step.logits[0, -1].float().cpu().numpy(), self.eos_id)) is None:
                    break
                else:
                    out.append(token)
                step = self.model(torch.tensor([out[-1:]], device=self.device), past_key_values=step.past_key_values, use_cache=True)
        return out

    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def render_chat(self, messages: Messages) -> str | None:
        if not self.chat_template():
            return None
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def generate(
        self, batch: Sequence[Messages], sampling: Sampling, batch_index: int = 0, response_format: ResponseFormat | None = None
    ) -> tuple[list[list[str]], int]:
        """`sampling.n` completions per conversation (batched, seeded per batch) and the tokens generated; with a
        `response_format`, every completion follows it."""
        texts = [self.render_chat(m) if self.use_chat_template else "\n\n".join(x["content"] for x in m) for m in batch]
        constraint = self.grammars.compile(response_format.spec()) if response_format is not None else None
        return sample(
            self.model, self.tokenizer, texts, sampling, chat=self.use_chat_template, seed=sampling.seed * 1_000_003 + batch_index,
            constraint=constraint,
        )  # fmt: skip

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def guidance_tokenizer(self) -> Any:
        """The vocabulary as llguidance reads it (built once, by `Grammars`)."""
        from halo_pipeline.runtimes.constraints import from_hf

        return from_hf(self.tokenizer, self.vocab_size, [self.eos_id])

    def close(self) -> None:
        self.model = None


def sample(
    model: Any, tokenizer: Any, texts: Sequence[str | None], sampling: Sampling, chat: bool, seed: int, constraint: Constraint | None = None
) -> tuple[list[list[str]], int]:
    """n completions per rendered prompt from a loaded model (also the model being trained: RAFT, the
    mid-training probe); left padding, then back to train mode. Returns them and the tokens generated. A
    `constraint` masks every row's tokens to what its own walk of the grammar allows."""
    import torch
    from transformers import LogitsProcessorList

    from halo_pipeline.runtimes.constraints import GuidedLogits

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    do_sample = sampling.temperature > 0
    per = sampling.n if do_sample else 1  # greedy samples are identical: decode once, repeat
    try:
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=not chat).to(model.device)
        guided = GuidedLogits(constraint, len(texts) * per, enc["input_ids"].shape[1]) if constraint is not None else None
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=do_sample,
                temperature=sampling.temperature if do_sample else None,
                top_p=sampling.top_p if do_sample else None,
                top_k=None,
                num_return_sequences=per,
                pad_token_id=tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList([guided]) if guided is not None else None,
            )
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    new = out[:, enc["input_ids"].shape[1] :]
    eos = tokenizer.eos_token_id
    tokens = int(((new != tokenizer.pad_token_id) | (new == eos)).sum()) if eos is not None else int(new.numel())
    decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [decoded[i * per : (i + 1) * per] * (sampling.n // per) for i in range(len(texts))], tokens


def gguf_to_hf(gguf: Path, out: Path, quant: str = "fp32") -> None:
    """Dequantize a GGUF file into an HF directory (transformers' GGUF loader), so any export can go back to training."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from halo_pipeline.engine.groups import quant as quant_group

    name = quant_group(quant).torch_dtype
    if name is None:
        raise ValueError(f"quant '{quant}' has no HF form (formats.hf in conf/quant/{quant}.yaml): choose fp32, fp16 or bf16")
    dtype = getattr(torch, name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None  # type: ignore[assignment]  # saving refuses a model still marked as GGUF-quantized
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _gguf_chat_template(gguf)  # transformers' GGUF loader drops it
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _gguf_chat_template(path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.chat_template")
    return None if field is None else bytes(field.parts[field.data[0]]).decode()
