"""Dataset rows (our artifact JSONL) -> the dataset formats TRL's trainers take.

SFT examples, preference pairs (DPO, ORPO, SimPO, reward models) and KTO samples are tokenized here, not by the trainer: the prompt as inference tokenizes it (the chat template's
rendering with its generation prompt, or the plain prompt with the tokenizer's special tokens), then the
completion tokenized on its own. Tokenizing the joined text instead lets the prompt's last token merge with the
completion's first (a newline with the indentation after it, a colon with a bracket), so the model would train
on a context it never sees when it generates after the prompt's own tokens.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def _user(prompt: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def prompt_text(prompt: str, system: str | None) -> str:
    """A prompt as a model without a chat template gets it: the runtimes join the system message and the prompt
    with a blank line (`runtimes.to_messages`, then each runtime's plain-text rendering)."""
    return f"{system}\n\n{prompt}" if system else prompt


def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=special)["input_ids"]]


def prompt_ids(tokenizer: Any, prompt: str, chat: bool, system: str | None) -> list[int]:
    """The prompt's tokens as inference has them before it generates: the chat template's rendering with the
    generation prompt (its text holds its own special tokens), else the plain prompt with the tokenizer's BOS."""
    if chat:
        return _encode(
            tokenizer, str(tokenizer.apply_chat_template(_user(prompt, system), tokenize=False, add_generation_prompt=True)), False
        )
    return _encode(tokenizer, prompt_text(prompt, system), True)


def _completion_text(tokenizer: Any, prompt: str, completion: str, chat: bool, system: str | None) -> tuple[str, str | None]:
    """The completion's text after the prompt, to be tokenized on its own and to end with what ends a turn (the
    chat template's end of turn, else EOS, as TRL adds it); and what the prompt alone renders that the conversation does not
    (None when the conversation goes on from the prompt's whole rendering).

    With a chat template, the completion is what the whole conversation renders after the prompt alone. A template
    that renders the prompt differently alone (a generation prompt the conversation leaves out) gives what follows
    the text the two share: the model is still trained after the prompt's tokens as inference has them."""
    if not chat:
        eos = tokenizer.eos_token
        return (completion if eos is None or completion.endswith(eos) else completion + eos), None
    messages = _user(prompt, system)
    head = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    full = str(tokenizer.apply_chat_template(messages + _assistant(completion), tokenize=False))
    shared = len(os.path.commonprefix([head, full]))
    return full[shared:], (head[shared:] if shared < len(head) else None)


def sft_examples(rows: list[dict[str, Any]], tokenizer: Any, chat: bool, system: str | None) -> list[dict[str, Any]]:
    """Tokenized SFT examples (`input_ids`, `completion_mask`: SFTTrainer builds its labels from them): a
    prompt/completion row is its prompt's tokens then its completion's, each tokenized as above; a `messages`
    row is its whole conversation through the chat template, every token trained (as TRL trains such rows)."""
    out: list[dict[str, Any]] = []
    differs: list[str] = []
    for r in rows:
        if "messages" in r:
            ids = [int(i) for i in tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]]
            out.append({"input_ids": ids, "completion_mask": [1] * len(ids)})
            continue
        prompt, completion = str(r["prompt"]), str(r["completion"])
        head = prompt_ids(tokenizer, prompt, chat, system)
        text, alone = _completion_text(tokenizer, prompt, completion, chat, system)
        tail = _encode(tokenizer, text, False)
        differs += [alone] if alone is not None else []
        out.append({"input_ids": head + tail, "completion_mask": [0] * len(head) + [1] * len(tail)})
    if differs:
        log.warning(
            "the chat template renders %d of %d prompts differently alone than followed by their completion (the prompt "
            "alone ends %r): each trains on its completion after the prompt as inference renders it",
            len(differs),
            len(rows),
            differs[0][-40:],
        )
    return out


def preference_examples(rows: list[dict[str, Any]], tokenizer: Any, chat: bool, system: str | None) -> list[dict[str, Any]]:
    """Tokenized preference pairs (`prompt_ids`, `chosen_ids`, `rejected_ids`, as DPOTrainer prepares them): the
    prompt as inference tokenizes it, each side tokenized on its own after it (see `sft_examples`)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        prompt = str(r["prompt"])
        example: dict[str, Any] = {"prompt_ids": prompt_ids(tokenizer, prompt, chat, system)}
        for side in ("chosen", "rejected"):
            example[f"{side}_ids"] = _encode(tokenizer, _completion_text(tokenizer, prompt, str(r[side]), chat, system)[0], False)
        out.append(example)
    return out


def pair_features(example: dict[str, Any], max_length: int) -> dict[str, list[int]]:
    """A tokenized pair (`preference_examples`) as ORPOTrainer and CPOTrainer's `tokenize_row` gives it: each side
    is the prompt's tokens then its own, the prompt masked out of the labels, the completion cut to `max_length`
    (as they cut it)."""
    prompt = [int(i) for i in example["prompt_ids"]]
    out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        tail = [int(i) for i in example[f"{side}_ids"]][: max(0, max_length - len(prompt))]
        ids = prompt + tail
        out |= {f"{side}_input_ids": ids, f"{side}_attention_mask": [1] * len(ids), f"{side}_labels": [-100] * len(prompt) + tail}
    return out


def reward_examples(rows: list[dict[str, Any]], tokenizer: Any, chat: bool, system: str | None) -> list[dict[str, Any]]:
    """Pairs as RewardTrainer takes them tokenized (`chosen_ids`, `rejected_ids`: each whole sequence), the
    prompt as inference tokenizes it and each side on its own after it (see `preference_examples`)."""
    return [
        {f"{side}_ids": pair["prompt_ids"] + pair[f"{side}_ids"] for side in ("chosen", "rejected")}
        for pair in preference_examples(rows, tokenizer, chat, system)
    ]


def text_row(row: dict[str, Any], chat: bool, system: str | None) -> dict[str, Any]:
    """A prompt/completion row as text for a trainer that tokenizes it itself (conversational with a chat template)."""
    if chat:
        return {"prompt": _user(str(row["prompt"]), system), "completion": _assistant(str(row["completion"]))}
    return {"prompt": prompt_text(str(row["prompt"]), system), "completion": str(row["completion"])}


def preference_rows(rows: list[dict[str, Any]], chat: bool, system: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in rows:
        if chat:
            out.append(
                {
                    "prompt": _user(str(r["prompt"]), system),
                    "chosen": _assistant(str(r["chosen"])),
                    "rejected": _assistant(str(r["rejected"])),
                }
            )
        else:
            out.append({"prompt": prompt_text(str(r["prompt"]), system), "chosen": str(r["chosen"]), "rejected": str(r["rejected"])})
    return out


def prompt_rows(rows: list[dict[str, Any]], chat: bool, system: str | None) -> list[dict[str, Any]]:
    """One row per distinct prompt, keeping the task's own fields (tests, answers) for the reward."""
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = str(r.get("source_id") or r["prompt"])
        if key in seen:
            continue
        task = {k: v for k, v in r.items() if k not in ("prompt", "completion", "reward", "verified", "score", "score_components", "error")}
        prompt: Any = _user(str(r["prompt"]), system) if chat else prompt_text(str(r["prompt"]), system)
        seen[key] = {**task, "prompt": prompt, "task_prompt": str(r["prompt"])}
    return list(seen.values())


def completion_text(completion: Any) -> str:
    """TRL hands reward functions conversational completions as message lists."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def desirable(row: dict[str, Any], min_reward: float) -> bool | None:
    """Whether a verified sample is desirable: its `label`, else its `verified`, else `reward >= min_reward`
    (None when the row has none of them)."""
    for key in ("label", "verified"):
        if isinstance(row.get(key), bool):
            return bool(row[key])
    reward = row.get("reward")
    if isinstance(reward, int | float) and not isinstance(reward, bool):
        return float(reward) >= min_reward
    return None


def labelled_rows(rows: list[dict[str, Any]], chat: bool, system: str | None, min_reward: float) -> list[dict[str, Any]]:
    """Unpaired samples labelled desirable / undesirable (KTO's `prompt, completion, label` rows)."""
    out: list[dict[str, Any]] = []
    for i, r in enumerate(rows, start=1):
        label = desirable(r, min_reward)
        if label is None:
            raise ValueError(
                f"row {i} ({r.get('id', '?')}) has no `label`, `verified` or `reward` to tell whether its completion is desirable: "
                "train on a verifier's samples (synthesize with keep_unverified: true), or map a column to `label` with `columns:`"
            )
        out.append({**text_row(r, chat, system), "label": label})
    return out


def labelled_examples(
    rows: list[dict[str, Any]], tokenizer: Any, chat: bool, system: str | None, min_reward: float
) -> list[dict[str, Any]]:
    """KTO's samples tokenized (`prompt_ids`, `completion_ids`, `label`): the prompt as inference tokenizes it,
    the completion on its own after it (see `sft_examples`); labelled as `labelled_rows` labels them."""
    labelled = labelled_rows(rows, False, None, min_reward)  # the labels (and the error for a row without one)
    out: list[dict[str, Any]] = []
    for r, row in zip(rows, labelled, strict=True):
        prompt = str(r["prompt"])
        completion = _completion_text(tokenizer, prompt, str(r["completion"]), chat, system)[0]
        out.append(
            {
                "prompt_ids": prompt_ids(tokenizer, prompt, chat, system),
                "completion_ids": _encode(tokenizer, completion, False),
                "label": row["label"],
            }
        )
    return out
