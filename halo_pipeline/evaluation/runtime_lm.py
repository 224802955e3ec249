"""An lm-eval model over any runtime (GGUF with llama.cpp, MLX with mlx-lm): the model runs in-process.

Every continuation token is scored from the log-probs at the position before it, tokenized exactly as
lm-eval's `hf` backend does (the context as the tokenizer encodes a document, the continuation
appended; trailing context spaces belong to the continuation) — so the same model gives the same
scores through this and through `hf`. (`llama_cpp.server` returns prompt log-probs with `echo`
shifted by one position, so log-likelihood tasks score wrong through it.) Generation is greedy; under a
`response_format` each generated token is the most likely one the constraint allows, and an answer ends where the
constraint's output is complete (the task's stop strings would cut a JSON object or a pattern short, so they are not
applied to it).
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM

from halo_pipeline.runtimes.constraints import Constraint

GENERATE_CHUNK = 16  # tokens decoded between checks for a stop string


class RuntimeLM(LM):
    def __init__(self, runtime: Any, n_ctx: int = 2048, max_gen_toks: int = 256, constraint: Constraint | None = None) -> None:
        super().__init__()
        self.runtime, self.n_ctx, self.max_gen_toks = runtime, n_ctx, max_gen_toks
        self.constraint = constraint
        # what lm-eval's hf puts before an empty context: the model's BOS when it has one, else end-of-text
        self.prefix_token = runtime.bos_id if runtime.bos_id is not None else runtime.eos_id

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:  # as lm-eval's hf backend: trailing context spaces belong to the continuation
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole = self.runtime.encode(context + continuation)
        context_ids = self.runtime.encode(context)
        return context_ids, whole[len(context_ids) :]

    def _score(self, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
        tokens = (context_ids + continuation_ids)[-(self.n_ctx + 1) :]
        inputs = tokens[:-1]
        logprobs = self.runtime.logprobs(inputs)
        first = len(inputs) - len(continuation_ids)  # position whose log-probs predict the first continuation token
        total, greedy = 0.0, True
        for i, token in enumerate(continuation_ids):
            row = logprobs[first + i]
            total += float(row[token])
            greedy = greedy and int(row.argmax()) == token
        return total, greedy

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = request.args
            if context == "":
                context_ids, continuation_ids = [self.prefix_token], self.runtime.tokenize(continuation)
            else:
                context_ids, continuation_ids = self._encode_pair(context, continuation)
            results.append(self._score(context_ids, continuation_ids))
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        results = []
        window = self.n_ctx - 1
        for request in requests:
            (text,) = request.args
            ids = self.runtime.encode(text)
            total, start = 0.0, 0
            while start < len(ids):  # disjoint windows, each conditioned on the prefix token
                total += self._score([self.prefix_token], ids[start : start + window])[0]
                start += window
            results.append(total)
        return results

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        results = []
        for request in requests:
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            prompt = self.runtime.encode(context)[-(self.n_ctx - max_tokens) :]
            guide = self.constraint.start() if self.constraint is not None else None
            out: list[int] = []
            text = ""
            while len(out) < max_tokens:
                wanted = min(GENERATE_CHUNK, max_tokens - len(out))
                new = self.runtime.greedy(prompt + out, wanted, guide)
                out += new
                text = self.runtime.detokenize(out)
                if guide is not None:
                    if len(new) < wanted:  # the constraint's output is complete
                        break
                    continue
                cut = min((text.find(s) for s in until if s in text), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    break
            results.append(text)
        return results
