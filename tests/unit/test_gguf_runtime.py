"""The GGUF runtime's batched generation on the tiny model exported to GGUF: correct, seeded, reproducible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration  # converts and loads the tiny model

PROMPTS = ["Say hello.", "Write a function.", "What is two plus two?", "def add(a, b):", "Tell me a story"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from halo_pipeline.export.converting import convert
    from halo_pipeline.runtimes.catalog import build_tiny

    out = tmp_path_factory.mktemp("tiny-gguf")
    convert(build_tiny(), "gguf", "fp32", out)
    return out


def runtime(path: Path, parallel: int) -> Any:
    from halo_pipeline.runtimes import load

    return load(path, parallel=parallel)


def chats() -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": p}] for p in PROMPTS]


def test_greedy_batched_equals_one_sequence_greedy(tiny_gguf: Path) -> None:
    """Two slots for five prompts (refill): each text is what one sequence decoded alone gives, a sequence that
    meets EOS ends there while the others run on to max_new_tokens, and the token count adds up."""
    from halo_pipeline.runtimes import Sampling

    rt = runtime(tiny_gguf, parallel=2)
    texts, tokens = rt.generate(chats(), Sampling(n=1, temperature=0, max_new_tokens=40))
    lengths = []
    for messages, (text,) in zip(chats(), texts, strict=True):
        ids, _ = rt._prompt(messages)
        ref = rt.greedy(ids, 40)
        n = ref.index(rt.eos_id) if rt.eos_id in ref else 40
        assert text == rt.detokenize(ref[:n])
        lengths.append(n)
    assert tokens == sum(lengths)
    assert min(lengths) < 40 and max(lengths) == 40  # some ended at EOS early, some ran to the budget


def test_samples_of_one_prompt_share_its_cells_and_decode_as_if_alone(tiny_gguf: Path) -> None:
    """Three greedy samples per prompt through four slots: the prompt is decoded once for the samples admitted
    together, a group is split across refills, and every sample is still the one-sequence greedy text."""
    from halo_pipeline.runtimes import Sampling

    rt = runtime(tiny_gguf, parallel=4)
    texts, _ = rt.generate(chats(), Sampling(n=3, temperature=0, max_new_tokens=24))
    for messages, samples in zip(chats(), texts, strict=True):
        ids, _ = rt._prompt(messages)
        ref = rt.greedy(ids, 24)
        n = ref.index(rt.eos_id) if rt.eos_id in ref else 24
        assert samples == [rt.detokenize(ref[:n])] * 3


def test_same_seed_same_texts_other_seed_other_texts(tiny_gguf: Path) -> None:
    from halo_pipeline.runtimes import Sampling

    rt = runtime(tiny_gguf, parallel=4)  # 15 samples through 4 slots
    sampling = Sampling(n=3, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=7)
    a = rt.generate(chats(), sampling)
    b = rt.generate(chats(), sampling)
    assert a == b and [len(t) for t in a[0]] == [3] * len(PROMPTS)
    assert len({t for ts in a[0] for t in ts}) > len(PROMPTS)  # the samples of a prompt differ
    c = rt.generate(chats(), Sampling(n=3, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=8))
    assert c[0] != a[0]
    # a sample's seed is its own, not its slot's: on this fp32 model another width gives the same texts,
    # and so does another split of the prompts across contexts (one per core)
    assert runtime(tiny_gguf, parallel=16).generate(chats(), sampling) == a
    assert runtime(tiny_gguf, parallel=1).generate(chats(), sampling) == a


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_prompts_split_across_contexts_give_the_same_texts(tiny_gguf: Path, cores: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One context per core (up to one per prompt), a finished context's cores going to the others: the texts
    are those of one context decoding everything."""
    import halo_pipeline.runtimes.gguf as gguf
    from halo_pipeline.runtimes import Sampling

    sampling = Sampling(n=3, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=3)
    monkeypatch.setattr(gguf, "usable_cores", lambda: 1)
    one = runtime(tiny_gguf, parallel=4).generate(chats(), sampling)
    monkeypatch.setattr(gguf, "usable_cores", lambda: cores)
    rt = runtime(tiny_gguf, parallel=4)
    assert rt.generate(chats(), sampling) == one
    assert len(rt._batched) == min(cores, 4)  # 15 samples, 4 per context: at most 4 contexts


def test_a_prompt_is_decoded_only_past_what_the_context_holds(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One slot, five prompts in turn: each prompt after the first is decoded only past the beginning (the
    chat template's) it shares with the previous one still in the cache; the texts stay the greedy ones."""
    import llama_cpp

    import halo_pipeline.runtimes.gguf as gguf
    from halo_pipeline.runtimes import Sampling, common_prefix

    monkeypatch.setattr(gguf, "usable_cores", lambda: 1)
    rt = runtime(tiny_gguf, parallel=1)
    decoded = []
    real = llama_cpp.llama_decode
    monkeypatch.setattr(llama_cpp, "llama_decode", lambda ctx, batch: decoded.append(batch.n_tokens) or real(ctx, batch))
    texts, tokens = rt.generate(chats(), Sampling(n=1, temperature=0, max_new_tokens=6))
    prompts = [rt._prompt(m)[0] for m in chats()]
    shared = [0] + [common_prefix(a, b) for a, b in zip(prompts, prompts[1:], strict=False)]
    assert min(shared[1:]) > 0  # the prompts do share a beginning
    # each sample: its prompt past the shared beginning, then one token per step but the last sampled
    assert sum(decoded) == sum(len(p) - k for p, k in zip(prompts, shared, strict=True)) + tokens - len(prompts)
    for messages, (text,) in zip(chats(), texts, strict=True):
        ref = rt.greedy(rt._prompt(messages)[0], 6)
        assert text == rt.detokenize(ref[: ref.index(rt.eos_id)] if rt.eos_id in ref else ref)


def test_max_new_tokens_is_respected(tiny_gguf: Path) -> None:
    from halo_pipeline.runtimes import Sampling

    rt = runtime(tiny_gguf, parallel=3)
    texts, tokens = rt.generate(chats(), Sampling(n=2, temperature=1.0, max_new_tokens=5, seed=1))
    assert 0 < tokens <= 5 * 2 * len(PROMPTS)
    assert all(len(rt.tokenize(t)) <= 6 for ts in texts for t in ts)
    assert rt.generate(chats(), Sampling(n=2, max_new_tokens=0)) == ([["", ""]] * len(PROMPTS), 0)
    assert rt.generate([], Sampling(n=2)) == ([], 0)


def test_a_prompt_that_continues_a_running_sample_shares_only_its_decoded_cells(tiny_gguf: Path) -> None:
    """Two slots: A runs while X stops at once (a stop string) and B takes its slot; B's prompt is A's prompt
    plus the beginning of A's own greedy continuation, so it shares the cells A has decoded so far — never
    the token A has in the same step's batch. B's text is still its one-sequence greedy text."""
    from halo_pipeline.runtimes.gguf import make_sampler
    from halo_pipeline.runtimes.gguf_batch import BatchedContext, Job

    rt = runtime(tiny_gguf, parallel=2)
    a = rt._prompt(chats()[0])[0]
    x = rt._prompt(chats()[1])[0]
    x_first = rt.detokenize(rt.greedy(x, 1))
    b = a + rt.greedy(a, 3)
    jobs = [Job(a, 0), Job(x, 0, [x_first]), Job(b, 0)]
    ctx = BatchedContext(rt.scorer, 2, 256, 1)
    try:
        texts = [t for t, _ in ctx.generate(jobs, lambda seed: make_sampler(rt.scorer, temperature=0, seed=seed), 12)]
    finally:
        ctx.close()
    for job, text in zip([jobs[0], jobs[2]], [texts[0], texts[2]], strict=True):
        ref = rt.greedy(job.prompt, 12)
        assert text == rt.detokenize(ref[: ref.index(rt.eos_id)] if rt.eos_id in ref else ref)
    assert texts[1] == ""  # X: cut before its stop string, its first token
