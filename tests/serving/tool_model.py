"""A tiny model that calls a tool: the tiny model with a tool-aware chat template (tools rendered, calls written as
`<tool_call>{json}</tool_call>`, tool results as `tool` turns), taught two exchanges by heart so its greedy output is
a real call and a real answer to the tool's result. Built in ~5 s; served by every engine like any other model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools:\n{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n"
    'Call one as <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n{% endif %}'
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{%- for call in message.tool_calls %}<tool_call>\n"
    "{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}\n</tool_call>"
    "{%- endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
RESULT = "sunny, 21 C"
ANSWER = "It is sunny in Paris."


def answered(call_id: str = "call_1", as_template_sees_it: bool = False) -> list[dict[str, Any]]:
    """The conversation after the call, with the tool's result: what the client sends for the final answer (the
    arguments as a JSON string), or what the server hands the chat template (the arguments as an object)."""
    arguments = CALL["arguments"] if as_template_sees_it else json.dumps(CALL["arguments"])
    return [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": CALL["name"], "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": RESULT},
    ]


def build_tool_model(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from halo_pipeline.runtimes.catalog import build_tiny

    if (out / "config.json").is_file():
        return out
    tiny = build_tiny()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.add_tokens(["<tool_call>", "</tool_call>"])  # plain added tokens: decoded like text
    tokenizer.chat_template = TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.max_position_embeddings = 1024  # the tool definitions make long prompts
    call_text = "<tool_call>\n" + json.dumps(CALL) + "\n</tool_call><|im_end|>\n"
    prompts = [
        tokenizer.apply_chat_template(QUESTION, tools=TOOLS, tokenize=False, add_generation_prompt=True),
        tokenizer.apply_chat_template(answered(as_template_sees_it=True), tools=TOOLS, tokenize=False, add_generation_prompt=True),
    ]
    replies = [call_text, ANSWER + "<|im_end|>\n"]
    batches = []
    for p, r in zip(prompts, replies, strict=True):
        ids = tokenizer(p + r, add_special_tokens=False)["input_ids"]
        labels = [-100] * len(tokenizer(p, add_special_tokens=False)["input_ids"])  # the replies are what it learns
        batches.append((torch.tensor([ids]), torch.tensor([labels + ids[len(labels) :]])))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(1000):  # by heart: until greedy decoding reproduces both replies exactly
        if step % 50 == 0 and step and all(_greedy(model, tokenizer, p) == r.rstrip("\n") for p, r in zip(prompts, replies, strict=True)):
            break
        model.train()
        ids, labels = batches[step % 2]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    else:
        raise AssertionError("the tool model did not learn its replies")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def with_special_markers(hf: Path, out: Path) -> Path:
    """A copy of the tool model whose `<tool_call>` markers are special tokens (as in models that add them so): the same
    weights and ids, but a plain decode drops the markers, so the server must keep special tokens to parse calls."""
    shutil.copytree(hf, out, dirs_exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = out / name
        config = json.loads(path.read_text())
        tokens = config.get("added_tokens") or list((config.get("added_tokens_decoder") or {}).values())
        for token in tokens:
            if token["content"] in ("<tool_call>", "</tool_call>"):
                token["special"] = True
        path.write_text(json.dumps(config))
    return out


def _greedy(model: Any, tokenizer: Any, prompt: str) -> str:
    import torch

    model.eval()
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=60, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return str(tokenizer.decode(out[0, ids.shape[1] :]))
