"""An lm-eval model that runs a GGUF file in-process with llama-cpp-python.

`llama_cpp.server` returns prompt log-probs with `echo` shifted by one position, so lm-eval's
log-likelihood tasks score wrong through it. Here the model runs with `logits_all=True` and every
continuation token is scored from the logits of the position before it, tokenized exactly as
lm-eval's `hf` backend does — so the same model gives the same scores through both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lm_eval.api.model import LM

from halo_pipeline.export.runtimes import log_softmax


class LlamaCppLM(LM):
    def __init__(self, path: Path, n_ctx: int = 2048, max_gen_toks: int = 256) -> None:
        super().__init__()
        from llama_cpp import Llama

        from halo_pipeline.export.formats import gguf_context_length

        # logits_all keeps n_ctx x vocab floats: cap the context at what the model was trained for
        n_ctx = min(n_ctx, gguf_context_length(path) or n_ctx)
        self.llm = Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0)
        self.n_ctx = self.llm.n_ctx()
        self.max_gen_toks = max_gen_toks
        bos = self.llm.token_bos()
        self.prefix_token = bos if bos >= 0 else self.llm.token_eos()  # what hf uses before an empty context

    def tok_encode(self, text: str) -> list[int]:
        # hf's default: the tokenizer's own special-token policy (add_bos from the GGUF metadata), specials parsed
        return list(self.llm.tokenize(text.encode(), add_bos=self.llm._model.add_bos_token(), special=True))

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:  # as lm-eval's hf backend: trailing context spaces belong to the continuation
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        context_ids = self.tok_encode(context)
        return context_ids, whole[len(context_ids) :]

    def _score(self, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
        tokens = (context_ids + continuation_ids)[-(self.n_ctx + 1) :]
        inputs = tokens[:-1]
        self.llm.reset()
        self.llm.eval(inputs)
        first = len(inputs) - len(continuation_ids)  # position whose logits predict the first continuation token
        total, greedy = 0.0, True
        for i, token in enumerate(continuation_ids):
            logprobs = log_softmax(np.asarray(self.llm.scores[first + i]))
            total += float(logprobs[token])
            greedy = greedy and int(logprobs.argmax()) == token
        return total, greedy

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = request.args
            if context == "":
                context_ids, continuation_ids = [self.prefix_token], self.tok_encode(continuation)
            else:
                context_ids, continuation_ids = self._encode_pair(context, continuation)
            results.append(self._score(context_ids, continuation_ids))
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        results = []
        window = self.n_ctx - 1
        for request in requests:
            (text,) = request.args
            ids = self.tok_encode(text)
            total, start = 0.0, 0
            while start < len(ids):  # disjoint windows, each conditioned on the prefix token
                chunk = ids[start : start + window]
                total += self._score([self.prefix_token], chunk)[0]
                start += window
            results.append(total)
        return results

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        results = []
        for request in requests:
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(gen_kwargs.get("temperature", 0.0)) if gen_kwargs.get("do_sample") else 0.0
            prompt = self.tok_encode(context)
            max_tokens = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            prompt = prompt[-(self.n_ctx - max_tokens) :]
            self.llm.reset()
            out = self.llm.create_completion(
                prompt, max_tokens=max_tokens, temperature=temperature, top_k=1 if temperature == 0 else 40, stop=until or None, seed=0
            )
            results.append(out["choices"][0]["text"])  # type: ignore[index]  # not streamed
        return results
