"""`halo-pipeline preview`: the examples a train step sees are the trainer's own. The preview's tokens and loss
masks are held to what a real TRL trainer (built by the train step's own code) prepares and collates; the CLI
names the upstream step that must run first, then reads its cached output."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import write
from halo_pipeline.engine.step import RunContext
from halo_pipeline.tasks.train import TrainParams
from halo_pipeline.training import model_io, trl_runner
from halo_pipeline.training.algorithms import trainer_config
from halo_pipeline.training.preview import preview

QA = [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": f"It is {2 * i}."} for i in range(5)]
LONG = {"id": "long", "prompt": "word " * 60, "completion": "ok"}  # its prompt alone fills max_length: dropped
CUT = {"id": "cut", "prompt": "Say it.", "completion": "yes " * 60}  # truncated inside its completion
PAIRS = [{"id": f"p{i}", "prompt": f"What is {i}+{i}?", "chosen": f"It is {2 * i}.", "rejected": "No"} for i in range(4)]


def trainer(params: TrainParams, rows: list[dict[str, Any]], tmp_path: Path) -> Any:
    """The trainer the train step builds (trl_runner's own code), not one assembled here."""
    model, tokenizer = model_io.load(params)
    chat = params.use_chat_template and bool(tokenizer.chat_template)
    ctx = RunContext(step_id="train", kind="train", out_dir=tmp_path, run_dir=tmp_path, seed=0, log=logging.getLogger("test.preview"))
    return trl_runner._trainer(params, model, tokenizer, chat, rows, trainer_config(params, tmp_path / "ckpt"), ctx)


def test_sft_preview_masks_are_the_trainers_labels(tmp_path: Path) -> None:
    params = TrainParams.model_validate({"model": "tiny", "algorithm": {"name": "sft"}, "max_length": 48})
    rows = [QA[0], LONG, CUT, *QA[1:]]
    shown = preview(params, rows, n=len(rows))
    real = trainer(params, rows, tmp_path)
    kept = [ex for ex in shown.examples if not ex.dropped]
    assert [ex.id for ex in shown.examples if ex.dropped] == ["long"]
    assert len(kept) == len(real.train_dataset) == len(rows) - 1
    for i, ex in enumerate(kept):
        prepared = real.train_dataset[i]
        batch = real.data_collator([{"input_ids": prepared["input_ids"], "labels": prepared["labels"]}])
        (seq,) = ex.sequences
        assert seq.ids == list(prepared["input_ids"])
        assert seq.trained == [int(label) != -100 for label in batch["labels"][0]]
    first = kept[0].sequences[0]
    trained_text = "".join(p for p, t in zip(first.pieces, first.trained, strict=True) if t)
    assert trained_text.startswith("It is 0.") and "What is" not in trained_text  # the completion only
    cut = next(ex for ex in shown.examples if ex.id == "cut").sequences[0]
    assert cut.truncated and len(cut.ids) == 48 and cut.length > 48
    stats = shown.stats
    assert (stats["rows"], stats["truncated"], stats["dropped"], stats["max_length"]) == (7, 2, 1, 48)
    assert stats["tokens"]["max"] == max(s.length for ex in shown.examples for s in ex.sequences)


def test_multi_turn_messages_train_on_every_token_as_trl_does(tmp_path: Path) -> None:
    params = TrainParams.model_validate({"model": "tiny", "algorithm": {"name": "sft"}, "max_length": 128})
    rows = [{"id": "m", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    (ex,) = preview(params, rows, n=1).examples
    real = trainer(params, rows, tmp_path)
    labels = real.data_collator([{k: real.train_dataset[0][k] for k in ("input_ids", "labels")}])["labels"][0]
    assert ex.sequences[0].trained == [int(label) != -100 for label in labels] and all(ex.sequences[0].trained)


def test_dpo_preview_is_what_the_preference_collator_yields(tmp_path: Path) -> None:
    params = TrainParams.model_validate({"model": "tiny", "algorithm": {"name": "dpo"}, "max_length": 20})
    shown = preview(params, PAIRS, n=len(PAIRS))
    real = trainer(params, PAIRS, tmp_path)
    assert len(real.train_dataset) == len(PAIRS)
    for i, ex in enumerate(shown.examples):
        prepared = {k: real.train_dataset[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
        batch = real.data_collator([prepared])
        for j, seq in enumerate(ex.sequences):
            size = int(batch["attention_mask"][j].sum())
            assert seq.side == ("chosen", "rejected")[j]
            assert seq.ids == [int(t) for t in batch["input_ids"][j][:size]]
            assert seq.trained == [bool(m) for m in batch["completion_mask"][j][:size]]
    chosen = shown.examples[0].sequences[0]
    assert "".join(p for p, t in zip(chosen.pieces, chosen.trained, strict=True) if t).startswith("It is 0")
    assert shown.stats["pairs"]["chosen_longer_share"] == 1.0 and shown.stats["pairs"]["identical"] == 0
    assert shown.stats["truncated"] == 4 and chosen.truncated  # max_length 20 cuts every pair: the collator truncates


RECIPE = """
defaults:
  - model: tiny
  - backend: cpu
  - algorithm: sft
  - _self_
name: preview
steps:
  dedup:
    inputs: {dataset: file:data.jsonl}
  train:
    inputs: {dataset: dedup.dataset}
    with: {model: "${model}", backend: "${backend}", algorithm: "${algorithm}", max_steps: 2, max_length: 48}
"""


def test_preview_cli_names_the_step_to_run_first_then_reads_its_cached_output(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from halo_pipeline.cli import main
    from halo_pipeline.engine.execute import execute, step_calls
    from halo_pipeline.engine.plan import plan_recipe

    recipe = write(project / "recipes/p.yaml", RECIPE)
    (project / "recipes/data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*QA, QA[0] | {"id": "again"}, LONG]))
    assert main(["preview", str(recipe), "-n", "2"]) == 2
    err = capsys.readouterr().err
    assert "dedup has no cached output" in err and f"halo-pipeline run {recipe} --until dedup" in err
    plan = plan_recipe(str(recipe), [])
    execute(step_calls(plan, project / "outputs/run")["dedup"], {})  # what `run --until dedup` leaves in the cache
    assert main(["preview", str(recipe), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "── row 1 · id r0" in out and "[[It is 0.<|im_end|>" in out and "<|im_start|>user\nWhat is 0+0?" in out
    assert "row 3" not in out  # -n 2
    assert "6 rows" in out and "1 dropped by the trainer" in out  # dedup removed the exact duplicate
    assert main(["preview", str(recipe), "-n", "1", "--format", "json", "steps.train.with.max_length=256"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["stats"]["dropped"] == 0 and shown["max_length"] == 256 and shown["examples"][0]["id"] == "r0"


def test_grpo_preview_shows_the_prompts_as_the_model_gets_them() -> None:
    params = TrainParams.model_validate(
        {"model": "tiny", "algorithm": {"name": "grpo", "batch_size": 2, "num_generations": 2}, "verifier": {"name": "exact_match"}}
    )
    rows = [{"id": f"t{i}", "prompt": f"Count to {i}.", "answer": str(i)} for i in range(3)] + [{"id": "again", "prompt": "Count to 0."}]
    shown = preview(params, rows, n=2)
    assert [ex.id for ex in shown.examples] == ["t0", "t1"] and shown.max_length is None
    (seq,) = shown.examples[0].sequences
    assert "".join(seq.pieces).endswith("Count to 0.<|im_end|>\n<|im_start|>assistant\n") and not any(seq.trained)
    assert shown.stats["examples"] == 3 and shown.stats["duplicate_prompts"] == 1  # one example per distinct prompt


def test_the_terminal_shows_trained_tokens_in_colour_and_pipes_get_markers() -> None:
    import io

    from rich.console import Console

    from halo_pipeline.cli.preview import marked, render

    assert marked(["a", "b", "c", "d"], [False, True, True, False]) == "a[[bc]]d"
    assert marked(["a", "b", "c", "d"], [False, True, True, False], boundaries=True) == "a[[b|c]]d"
    params = TrainParams.model_validate({"model": "tiny", "algorithm": {"name": "sft"}})
    shown = preview(params, QA[:1], n=1)
    out = io.StringIO()
    render(shown, "train", Path("qa.jsonl"), Console(file=out, force_terminal=True, color_system="standard", width=200))
    text = out.getvalue()
    from rich.text import Text

    assert "[[" not in Text.from_ansi(text).plain and "trained tokens in green" in text
    assert "\x1b[1;92mI\x1b[0m\x1b[1;32mt" in text and "\x1b[37mWhat" in text  # trained: bold greens, alternating; masked: grey


def test_token_pieces_join_into_the_decoded_text_characters_whole() -> None:
    from halo_pipeline.training.preview import _pieces, load_tokenizer

    tokenizer = load_tokenizer(TrainParams.model_validate({"model": "tiny"}))
    for text in ("héllo wörld ✓ 日本語", " two spaces  and\ttab\n"):
        ids = tokenizer(text)["input_ids"]
        pieces = _pieces(tokenizer, ids)
        assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids)
        assert "\ufffd" not in "".join(pieces)  # a character split over byte tokens shows whole, with its last token
