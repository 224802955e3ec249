"""How the tiny model stored in `runtimes/tiny_model/` was made; run to make it again:
`python -m halo_pipeline.runtimes.tiny OUT_DIR`.

The model is stored, not built on each machine: training runs torch's CPU kernels, which round differently
on different CPUs (AVX-512, AVX2, the portable kernels), so the same seed trained to other weights elsewhere
and tests that read the model's text failed there. The stored files are the same bytes on every machine;
`catalog.build_tiny()` copies them into the models folder. The byte-level BPE tokenizer is integer work and
trains to the same vocabulary everywhere (tests/unit/test_tiny_model.py checks it against the stored one).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from halo_pipeline.runtimes.catalog import CHATML

TOY_TEXT = """<|im_start|>user
Write a function that adds two numbers.<|im_end|>
<|im_start|>assistant
def add(a, b):
    return a + b<|im_end|>
<|im_start|>user
What is the capital of France?<|im_end|>
<|im_start|>assistant
The capital of France is Paris.<|im_end|>
<|im_start|>user
Say hello.<|im_end|>
<|im_start|>assistant
Hello! How can I help you today?<|im_end|>
"""


def train_tokenizer() -> Any:
    """The byte-level BPE tokenizer (400 tokens, ChatML specials) trained on the toy text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    corpus = [TOY_TEXT] * 4 + [
        "def f(x):\n    return x * 2\n",
        "for i in range(10):\n    print(i)\n",
        "The quick brown fox jumps over the lazy dog.",
    ]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    fast.chat_template = CHATML
    return fast


def train_tiny(out: Path) -> Path:
    """A 2-layer, 64-wide Llama trained 80 AdamW steps on the toy text, so that its greedy output is readable."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = train_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    ids = torch.tensor([fast(TOY_TEXT)["input_ids"]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.generation_config.pad_token_id = fast.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m halo_pipeline.runtimes.tiny OUT_DIR")
    print(train_tiny(Path(sys.argv[1])))
