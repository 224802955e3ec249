"""Training sees the context inference sees: a prompt/completion example is the prompt's tokens as inference
tokenizes the prompt before it generates, then the completion's own tokens; not the tokens of the joined text,
where the prompt's last token merges with the completion's first. Held for a chat template whose generation
prompt ends in a space ("Answer: " + "it is…" tokenizes to " it"), the tiny model's ChatML template (its
newline merges with the indentation of code), and a model trained without a template (a plain prompt ending in
a newline). The trainer's dataset, the preview, and TRL's own warning about such prompts are checked, for SFT,
the preference pairs of DPO, ORPO, SimPO and reward models, and KTO's samples."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from halo_pipeline.engine.step import RunContext
from halo_pipeline.runtimes import to_messages
from halo_pipeline.runtimes.catalog import build_tiny
from halo_pipeline.runtimes.hf import HFRuntime
from halo_pipeline.tasks.train import TrainParams
from halo_pipeline.training import data, model_io, trl_runner
from halo_pipeline.training.algorithms import trainer_config
from halo_pipeline.training.preview import preview

ANSWER = (  # a template that renders the assistant's turn right after "Answer: ", its generation prompt
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'Answer: ' + m['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ 'Question: ' + m['content'] + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Answer: ' }}{% endif %}"
)
WARNING = "tokenized prompt is not a prefix"

CASES = {  # name: (chat template or None for the stored ChatML, use_chat_template, prompt, completion, what ends the turn)
    "answer-template": (ANSWER, True, "What is 1+1?", "it is 2.", "<|im_end|>\n"),
    "chatml-code": (None, True, "Double x.", "    return x * 2", "<|im_end|>\n"),
    "no-template": (None, False, "def f(x):\n", "    return x * 2", "<|im_end|>"),  # EOS, as TRL adds it
}


def model_dir(tmp_path: Path, template: str | None) -> Path:
    if template is None:
        return build_tiny()
    folder = tmp_path / "model"
    shutil.copytree(build_tiny(), folder)
    (folder / "chat_template.jinja").write_text(template)
    return folder


def inference_prompt_ids(runtime: HFRuntime, prompt: str) -> list[int]:
    """The prompt's ids as the HF runtime's sampler feeds them to generate (runtimes.hf.generate, then sample)."""
    messages = to_messages(prompt, None)
    chat = runtime.use_chat_template
    text = runtime.render_chat(messages) if chat else "\n\n".join(m["content"] for m in messages)
    return [int(i) for i in runtime.tokenizer(text, add_special_tokens=not chat)["input_ids"]]


def built_trainer(params: TrainParams, rows: list[dict[str, Any]], tmp_path: Path) -> Any:
    """The trainer the train step builds (trl_runner's own code)."""
    from halo_pipeline.training import algorithms

    model, tokenizer = model_io.load(params, for_reward_model=algorithms.get(params.algorithm.name).reward_model)
    chat = params.use_chat_template and bool(tokenizer.chat_template)
    ctx = RunContext(step_id="train", kind="train", out_dir=tmp_path, run_dir=tmp_path, seed=0, log=logging.getLogger("test.boundary"))
    return trl_runner._trainer(params, model, tokenizer, chat, rows, trainer_config(params, tmp_path / "ckpt"), ctx)


@pytest.mark.parametrize("case", list(CASES))
def test_the_trainer_sees_the_prompt_as_inference_tokenizes_it_then_the_completion(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from accelerate.logging import MultiProcessAdapter

    template, use_chat, prompt, completion, end = CASES[case]
    folder = model_dir(tmp_path, template)
    params = TrainParams.model_validate({"model": str(folder), "algorithm": {"name": "sft"}, "use_chat_template": use_chat})
    rows = [{"id": "r1", "prompt": prompt, "completion": completion}]
    runtime = HFRuntime(folder, use_chat_template=use_chat)
    tokenizer = runtime.tokenizer
    head = inference_prompt_ids(runtime, prompt)
    tail = [int(i) for i in tokenizer(completion + end, add_special_tokens=False)["input_ids"]]
    joined_text = (str(runtime.render_chat(to_messages(prompt, None))) if use_chat else prompt) + completion + end
    joined = tokenizer(joined_text, add_special_tokens=not use_chat)["input_ids"]
    assert joined[: len(head)] != head, "the case must merge the prompt's last token with the completion's first"

    MultiProcessAdapter.warning_once.cache_clear()  # TRL warns once per message: let this test see it
    with caplog.at_level(logging.WARNING):
        real = built_trainer(params, rows, tmp_path)
    assert not [r for r in caplog.records if WARNING in r.getMessage()]
    prepared = real.train_dataset[0]
    assert list(prepared["input_ids"]) == head + tail
    assert list(prepared["labels"]) == [-100] * len(head) + tail  # the loss reads the completion and its end only
    (seq,) = preview(params, rows, n=1).examples[0].sequences  # what `halo-pipeline preview` shows
    assert seq.ids == head + tail and seq.trained == [False] * len(head) + [True] * len(tail)

    # the control: TRL tokenizing the joined text itself cuts the prompt's last token, and says so
    import trl
    from datasets import Dataset

    caplog.clear()
    owner: Any = type("Owner", (), {"_tokenizer": tokenizer, "chat_template": None, "completion_only_loss": True})()
    chat = use_chat and bool(tokenizer.chat_template)
    text_rows = Dataset.from_list([data.text_row(rows[0], chat, None)])
    with caplog.at_level(logging.WARNING):
        old = trl.SFTTrainer._prepare_dataset(owner, text_rows, tokenizer, real.args, False, None, "train")[0]
    assert list(old["input_ids"]) != head + tail
    assert [r for r in caplog.records if WARNING in r.getMessage()]


def test_a_template_that_renders_the_prompt_differently_alone_still_trains_after_the_prompt_inference_sees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A generation prompt the whole conversation does not render (here an empty thought block): the example keeps
    the prompt as rendered for inference, and the completion is what the conversation renders after their common text."""
    template = ANSWER.replace("{{ 'Answer: ' }}{% endif %}", "{{ 'Answer: <think></think>' }}{% endif %}")
    folder = model_dir(tmp_path, template)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    with caplog.at_level(logging.WARNING, logger="halo_pipeline.training.data"):
        (example,) = data.sft_examples([{"prompt": "Hi", "completion": "it is 2."}], tokenizer, True, None)
    head = tokenizer("Question: Hi\nAnswer: <think></think>", add_special_tokens=False)["input_ids"]
    tail = tokenizer("it is 2.<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert example["input_ids"] == head + tail and example["completion_mask"] == [0] * len(head) + [1] * len(tail)
    assert "renders 1 of 1 prompts differently alone" in caplog.text


@pytest.mark.parametrize("case", ["answer-template", "no-template"])
def test_dpo_pairs_are_the_prompt_as_inference_tokenizes_it_then_each_side(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from accelerate.logging import MultiProcessAdapter

    template, use_chat, prompt, completion, end = CASES[case]
    folder = model_dir(tmp_path, template)
    params = TrainParams.model_validate({"model": str(folder), "algorithm": {"name": "dpo"}, "use_chat_template": use_chat})
    rows = [{"id": "p1", "prompt": prompt, "chosen": completion, "rejected": "    pass" if case == "no-template" else "it is 3."}]
    runtime = HFRuntime(folder, use_chat_template=use_chat)
    head = inference_prompt_ids(runtime, prompt)
    sides = {
        s: [int(i) for i in runtime.tokenizer(rows[0][s] + end, add_special_tokens=False)["input_ids"]] for s in ("chosen", "rejected")
    }
    MultiProcessAdapter.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        real = built_trainer(params, rows, tmp_path)
    assert not [r for r in caplog.records if WARNING in r.getMessage()]
    prepared = real.train_dataset[0]
    assert list(prepared["prompt_ids"]) == head
    assert {s: list(prepared[f"{s}_ids"]) for s in sides} == sides
    shown = preview(params, rows, n=1).examples[0].sequences
    assert [(seq.side, seq.ids) for seq in shown] == [(s, head + ids) for s, ids in sides.items()]
    assert all(seq.trained == [False] * len(head) + [True] * (len(seq.ids) - len(head)) for seq in shown)


@pytest.mark.parametrize("algorithm", ["orpo", "simpo", "rm"])
def test_orpo_simpo_and_reward_model_pairs_are_the_prompt_as_inference_tokenizes_it_then_each_side(algorithm: str, tmp_path: Path) -> None:
    template, use_chat, prompt, completion, end = CASES["answer-template"]
    folder = model_dir(tmp_path, template)
    params = TrainParams.model_validate({"model": str(folder), "algorithm": {"name": algorithm}})
    rows = [{"id": "p1", "prompt": prompt, "chosen": completion, "rejected": "it is 3."}]
    runtime = HFRuntime(folder, use_chat_template=use_chat)
    head = inference_prompt_ids(runtime, prompt)
    sides = {
        s: [int(i) for i in runtime.tokenizer(rows[0][s] + end, add_special_tokens=False)["input_ids"]] for s in ("chosen", "rejected")
    }
    joined = runtime.tokenizer(str(runtime.render_chat(to_messages(prompt, None))) + completion + end, add_special_tokens=False)[
        "input_ids"
    ]
    assert joined != head + sides["chosen"], "the case must merge the prompt's last token with the completion's first"
    prepared = built_trainer(params, rows, tmp_path).train_dataset[0]
    for side, ids in sides.items():
        if algorithm == "rm":  # RewardTrainer takes each whole sequence, every token scored
            assert list(prepared[f"{side}_ids"]) == head + ids
        else:  # ORPO / CPO: the prompt's tokens then the side's, the prompt masked out of the labels
            assert list(prepared[f"{side}_input_ids"]) == head + ids
            assert list(prepared[f"{side}_labels"]) == [-100] * len(head) + ids
    shown = preview(params, rows, n=1).examples[0].sequences
    assert [(seq.side, seq.ids) for seq in shown] == [(s, head + ids) for s, ids in sides.items()]


def test_kto_samples_are_the_prompt_as_inference_tokenizes_it_then_the_completion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from accelerate.logging import MultiProcessAdapter

    template, use_chat, prompt, completion, end = CASES["answer-template"]
    folder = model_dir(tmp_path, template)
    params = TrainParams.model_validate({"model": str(folder), "algorithm": {"name": "kto"}})
    rows = [
        {"id": "k1", "prompt": prompt, "completion": completion, "verified": True},
        {"id": "k2", "prompt": prompt, "completion": "it is 3.", "verified": False},
    ]
    runtime = HFRuntime(folder, use_chat_template=use_chat)
    head = inference_prompt_ids(runtime, prompt)
    tails = [[int(i) for i in runtime.tokenizer(str(r["completion"]) + end, add_special_tokens=False)["input_ids"]] for r in rows]
    MultiProcessAdapter.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        real = built_trainer(params, rows, tmp_path)
    assert not [r for r in caplog.records if WARNING in r.getMessage()]
    prepared = sorted(real.train_dataset, key=lambda ex: not ex["label"])  # shuffled with the seed: the desirable one first
    assert [(list(ex["prompt_ids"]), list(ex["completion_ids"]), ex["label"]) for ex in prepared] == [
        (head, tails[0], True),
        (head, tails[1], False),
    ]
    (seq,) = preview(params, rows, n=1).examples[0].sequences
    assert seq.ids == head + tails[0] and seq.trained == [False] * len(head) + [True] * len(tails[0])
