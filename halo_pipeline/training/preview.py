"""What a train step trains on, as its trainer sees it: each example after `columns:`, the chat template and
truncation, token by token, with the tokens the loss is computed on told apart from the masked ones; and what
the whole dataset looks like to the trainer (lengths against `max_length`, rows truncated or dropped, empty
turns, duplicate prompts, and for preference pairs the balance of their labels).

The examples are prepared by TRL's own code, not a copy of it: the trainer class's `_prepare_dataset` (its
chat template, EOS, tokenization, label masks, truncation and the filter that drops what cannot train) and the
trainer's data collator, given the same rows (`training/data.py`), tokenizer and config (`training/configs.py`)
that `trl_runner` gives the trainer. A test holds the preview's masks to the labels a real trainer's collator
yields.
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from halo_pipeline.training import algorithms, data
from halo_pipeline.training.params import TrainingParams
from halo_pipeline.training.tokenization import load_tokenizer

ROW = "halo_row"  # a bookkeeping column: the dataset row an example came from (TRL's maps carry it through)


@dataclass
class Sequence:
    """One tokenized sequence: an SFT example, or one side of a preference pair."""

    side: str  # "" (sft, prompts), "chosen" or "rejected"
    ids: list[int]
    pieces: list[str]  # each token's text
    trained: list[bool]  # whether the loss reads this token (a reward model: every token it scores)
    length: int  # tokens before truncation

    @property
    def truncated(self) -> bool:
        return self.length > len(self.ids)


@dataclass
class Example:
    id: str
    row: int  # 1-based, in the dataset as the train step reads it
    sequences: list[Sequence]
    dropped: bool = False  # the trainer leaves it out (nothing left to train on after truncation)


@dataclass
class Preview:
    algorithm: str
    chat_template: bool  # whether the rows went through the tokenizer's chat template
    max_length: int | None
    examples: list[Example]
    stats: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def uses_chat(params: TrainingParams, tokenizer: Any) -> bool:
    return bool(params.use_chat_template and getattr(tokenizer, "chat_template", None))


def preview(params: TrainingParams, rows: list[dict[str, Any]], n: int = 3, tokenizer: Any = None, bad_rows: int = 0) -> Preview:
    """The first `n` examples as the trainer sees them, and statistics over every row.

    Args:
        params: the train step's params (`TrainParams`).
        rows: the dataset's rows, as the train step reads them (`read_rows` with its `columns:`).
        n: how many examples to show.
        tokenizer: the step's tokenizer, when already loaded.
        bad_rows: rows the step skipped as malformed (counted in the statistics).
    """
    import datasets

    datasets.disable_progress_bars()
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(params)
    chat = uses_chat(params, tokenizer)
    algo = params.algorithm
    kind = algorithms.get(algo.name).data
    config: Any = None
    if kind != "prompts":  # prompts need no TRL config (GRPO's checks its batch against one process's ranks)
        with tempfile.TemporaryDirectory(prefix="halo-preview-") as tmp:
            config = algorithms.trainer_config(params, Path(tmp))
    if algo.name == "sft":
        examples, lengths, notes = _sft(params, rows, tokenizer, chat, config, n)
    elif algo.name == "rm":
        examples, lengths, notes = _rm(params, rows, tokenizer, chat, config, n)
    elif kind == "preference":
        if algo.name != "dpo":  # orpo, simpo: TRL's experimental trainers tokenize pairs the same way, and truncate rather than drop
            import trl

            config = trl.DPOConfig(
                output_dir=str(config.output_dir), max_length=params.max_length, use_cpu=True, bf16=False, report_to="none"
            )
        examples, lengths, notes = _dpo(params, rows, tokenizer, chat, config, n)
        if algo.name != "dpo":
            notes.append(
                f"{algo.name}'s trainer prepares pairs on its own; shown as DPOTrainer prepares them (it truncates instead of dropping)"
            )
    elif kind == "labelled":  # kto: each sample's completion given its prompt, as an SFT prompt/completion row is masked
        import trl

        sft = trl.SFTConfig(output_dir=str(config.output_dir), max_length=params.max_length, use_cpu=True, bf16=False, report_to="none")
        # KTO's samples are tokenized as SFT's prompt/completion examples are (data.labelled_examples): shown that way
        examples, lengths, notes = _sft(params, rows, tokenizer, chat, sft, n)
        labels = [data.desirable(r, getattr(algo, "min_reward", 0.5)) for r in rows]
        notes.append(
            f"{algo.name} trains on {labels.count(True)} desirable and {labels.count(False)} undesirable samples"
            + (f" ({labels.count(None)} rows have no label, verified or reward)" if None in labels else "")
            + "; shown as SFTTrainer prepares prompt/completion rows"
        )
    else:  # grpo, raft: the prompts; completions are generated while training
        examples, lengths, notes = _prompts(params, rows, tokenizer, chat, n)
    max_length = None if kind == "prompts" else params.max_length
    stats = statistics(rows, lengths, max_length, algo.name, bad_rows)
    return Preview(algo.name, chat, max_length, examples, stats, notes)


def import_modules(params: TrainingParams) -> None:
    """Import what the preview of this step's algorithm imports: before it runs on a side thread (the train step's
    checks, beside the model's load), as two threads importing at once can deadlock."""
    import datasets  # noqa: F401
    import trl

    algo = params.algorithm
    kind = algorithms.get(algo.name).data
    if kind != "prompts":
        with tempfile.TemporaryDirectory(prefix="halo-preview-") as tmp:
            algorithms.trainer_config(params, Path(tmp))  # the algorithm's TRL config (trl.experimental's, for some)
    if algo.name == "rm":
        import trl.trainer.reward_trainer  # noqa: F401
    elif kind == "preference":
        import trl.trainer.dpo_trainer  # noqa: F401

        from halo_pipeline.training.algorithms.dpo import trainer_class

        trainer_class()
    elif algo.name == "sft" or kind == "labelled":
        trl.SFTTrainer  # noqa: B018  (its module, with the collator)


# ------------------------------------------------------------------ per algorithm, through TRL's own preparation


def _dataset(records: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{**r, ROW: i} for i, r in enumerate(records)])


def _untruncated(config: Any) -> Any:
    full = copy.copy(config)
    full.max_length = None  # the same preparation without truncation or the filters that follow it: every row's length
    return full


def _pieces(tokenizer: Any, ids: list[int], context: int = 8) -> list[str]:
    """Each token's text, as the whole sequence decodes: a token decoded after a few of its predecessors (a
    SentencePiece space, a character split over byte tokens), what it adds to them. A token that ends inside
    a character adds nothing; its bytes show with the token that completes the character."""
    pieces = []
    for i in range(len(ids)):
        start = max(0, i - context)
        before = tokenizer.decode(ids[start:i]).rstrip("\ufffd") if i > start else ""
        text = tokenizer.decode(ids[start : i + 1])
        if text.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")
            continue
        pieces.append(text[len(before) :] if text.startswith(before) else tokenizer.decode([ids[i]]))
    return pieces


def _by_row(dataset: Any) -> dict[int, dict[str, Any]]:
    return {int(ex[ROW]): ex for ex in dataset}


def _sft(
    params: TrainingParams,
    rows: list[dict[str, Any]],
    tokenizer: Any,
    chat: bool,
    config: Any,
    n: int,
) -> tuple[list[Example], list[dict[str, int]], list[str]]:
    import trl
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    records = data.sft_examples(rows, tokenizer, chat, params.system_prompt)  # tokenized as the train step tokenizes them
    dataset = _dataset(records)
    sample = rows[0] if rows else {}
    # what SFTTrainer.__init__ decides before it prepares the dataset (no assistant_only_loss: no training template;
    # completion_only_loss is set by every config the train step builds, else prompt/completion rows mask the prompt)
    owner: Any = SimpleNamespace(
        _tokenizer=tokenizer,
        chat_template=None,
        completion_only_loss=("messages" not in sample) if config.completion_only_loss is None else config.completion_only_loss,
    )
    prepared = _by_row(trl.SFTTrainer._prepare_dataset(owner, dataset, tokenizer, config, config.packing, None, "train"))
    full = _by_row(trl.SFTTrainer._prepare_dataset(owner, dataset, tokenizer, _untruncated(config), False, None, "train"))
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=config.pad_to_multiple_of)
    examples = []
    for i in range(min(n, len(records))):
        ex = prepared.get(i) or full[i]
        batch = collator([{"input_ids": ex["input_ids"], "labels": ex["labels"]}])
        ids = ex["input_ids"]
        trained = [int(label) != -100 for label in batch["labels"][0][: len(ids)]]
        seq = Sequence("", list(ids), _pieces(tokenizer, ids), trained, len(full[i]["input_ids"]))
        examples.append(Example(str(rows[i].get("id", i + 1)), i + 1, [seq], dropped=i not in prepared))
    lengths = [{"": len(full[i]["input_ids"]), "kept": int(i in prepared)} for i in range(len(records))]
    notes = []
    if "messages" in sample:
        notes.append("rows with `messages` train on every token of the conversation (only prompt/completion rows mask the prompt)")
    elif not owner.completion_only_loss:
        notes.append("completion_only_loss is off: the prompt is trained on too")
    return examples, lengths, notes


def _dpo(
    params: TrainingParams, rows: list[dict[str, Any]], tokenizer: Any, chat: bool, config: Any, n: int
) -> tuple[list[Example], list[dict[str, int]], list[str]]:
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from halo_pipeline.training.algorithms.dpo import trainer_class

    # tokenized as the train step tokenizes them (dpo, orpo and simpo alike), kept and cut as DPOTrainer keeps and
    # cuts them (ORPO and CPO cut a side's completion where prompt + completion pass max_length too)
    records = data.preference_examples(rows, tokenizer, chat, params.system_prompt)
    prepared, full = _pairs_prepared(trainer_class(), records, tokenizer, config)
    collator = DataCollatorForPreference(
        pad_token_id=tokenizer.pad_token_id,
        max_length=config.max_length,
        truncation_mode=config.truncation_mode,
        pad_to_multiple_of=config.pad_to_multiple_of,
    )
    examples = []
    for i in range(min(n, len(records))):
        ex = prepared.get(i) or full[i]
        batch = collator([{k: ex[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        sequences = []
        for j, side in enumerate(("chosen", "rejected")):
            size = int(batch["attention_mask"][j].sum())
            ids = [int(t) for t in batch["input_ids"][j][:size]]
            trained = [bool(m) for m in batch["completion_mask"][j][:size]]
            sequences.append(
                Sequence(side, ids, _pieces(tokenizer, ids), trained, len(full[i]["prompt_ids"]) + len(full[i][f"{side}_ids"]))
            )
        examples.append(Example(str(rows[i].get("id", i + 1)), i + 1, sequences, dropped=i not in prepared))
    lengths = [
        {side: len(full[i]["prompt_ids"]) + len(full[i][f"{side}_ids"]) for side in ("chosen", "rejected")} | {"kept": int(i in prepared)}
        for i in range(len(records))
    ]
    return examples, lengths, []


def _pairs_prepared(trainer: Any, records: list[dict[str, Any]], tokenizer: Any, config: Any) -> tuple[dict[int, Any], dict[int, Any]]:
    """A preference trainer's own preparation of the pairs, as configured and untruncated (what was cut or dropped)."""
    dataset = _dataset(records)
    owner: Any = SimpleNamespace(_tokenizer=tokenizer)  # what _prepare_dataset reads of its trainer
    prepared = _by_row(trainer._prepare_dataset(owner, dataset, tokenizer, config, "train"))
    return prepared, _by_row(trainer._prepare_dataset(owner, dataset, tokenizer, _untruncated(config), "train"))


def _rm(
    params: TrainingParams, rows: list[dict[str, Any]], tokenizer: Any, chat: bool, config: Any, n: int
) -> tuple[list[Example], list[dict[str, int]], list[str]]:
    import trl
    from trl.trainer.reward_trainer import DataCollatorForPreference

    records = data.reward_examples(rows, tokenizer, chat, params.system_prompt)  # as the train step tokenizes them
    prepared, full = _pairs_prepared(trl.RewardTrainer, records, tokenizer, config)
    collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=config.pad_to_multiple_of)
    examples = []
    for i in range(min(n, len(records))):
        ex = prepared.get(i) or full[i]
        batch = collator([{"chosen_ids": ex["chosen_ids"], "rejected_ids": ex["rejected_ids"]}])
        sequences = []
        for j, side in enumerate(("chosen", "rejected")):
            size = int(batch["attention_mask"][j].sum())
            ids = [int(t) for t in batch["input_ids"][j][:size]]
            sequences.append(Sequence(side, ids, _pieces(tokenizer, ids), [True] * size, len(full[i][f"{side}_ids"])))
        examples.append(Example(str(rows[i].get("id", i + 1)), i + 1, sequences, dropped=i not in prepared))
    lengths = [
        {side: len(full[i][f"{side}_ids"]) for side in ("chosen", "rejected")} | {"kept": int(i in prepared)} for i in range(len(records))
    ]
    notes = ["a reward model scores each whole sequence: every token is marked; pairs longer than max_length are dropped, not truncated"]
    return examples, lengths, notes


def _prompts(
    params: TrainingParams, rows: list[dict[str, Any]], tokenizer: Any, chat: bool, n: int
) -> tuple[list[Example], list[dict[str, int]], list[str]]:
    records = data.prompt_rows(rows, chat, params.system_prompt)
    examples, lengths = [], []
    for i, record in enumerate(records):
        prompt = record["prompt"]
        if chat:
            ids = list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        else:
            ids = list(tokenizer(prompt)["input_ids"])
        lengths.append({"": len(ids), "kept": 1})
        if i < n:
            seq = Sequence("", ids, _pieces(tokenizer, ids), [False] * len(ids), len(ids))
            examples.append(Example(str(record.get("id", i + 1)), i + 1, [seq]))
    return (
        examples,
        lengths,
        [f"{params.algorithm.name} trains on completions it generates for these prompts (one row per distinct prompt)"],
    )


# ------------------------------------------------------------------ the whole dataset


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(min(rank, len(ordered))) - 1]


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _prompt_key(row: dict[str, Any]) -> str:
    if row.get("messages") is not None and row.get("prompt") is None:
        turns = row["messages"]
        context = turns[:-1] if turns and turns[-1].get("role") == "assistant" else turns
        return json.dumps([[t.get("role"), str(t.get("content", "")).strip()] for t in context])
    return " ".join(str(row.get("prompt", "")).split())


def statistics(
    rows: list[dict[str, Any]], lengths: list[dict[str, int]], max_length: int | None, algorithm: str, bad_rows: int = 0
) -> dict[str, Any]:
    """What the whole dataset looks like to the trainer (see module docstring)."""
    longest = [max(v for k, v in item.items() if k != "kept") for item in lengths]
    stats: dict[str, Any] = {
        "rows": len(rows),
        "bad_rows": bad_rows,
        "examples": len(lengths),
        "tokens": {
            "p50": percentile(longest, 50),
            "p90": percentile(longest, 90),
            "p99": percentile(longest, 99),
            "max": max(longest, default=0),
        },
        "max_length": max_length,
    }
    if max_length is not None:
        stats["truncated"] = sum(1 for v in longest if v > max_length)
        stats["dropped"] = sum(1 for item in lengths if not item["kept"])
    kind = algorithms.get(algorithm).data if algorithm in algorithms.NAMES else "sft"
    fields = {"preference": ("prompt", "chosen", "rejected"), "prompts": ("prompt",)}.get(kind, ("prompt", "completion"))
    empty: dict[str, int] = {}
    empty_rows = 0
    for row in rows:
        if row.get("messages") is not None and row.get("prompt") is None:
            names = ["messages"] if any(_is_empty(t.get("content")) for t in row["messages"]) else []
        else:
            names = [name for name in fields if _is_empty(row.get(name))]
        for name in names:
            empty[name] = empty.get(name, 0) + 1
        empty_rows += bool(names)
    stats["empty"] = empty
    stats["empty_rows"] = empty_rows
    seen: set[str] = set()
    duplicates = 0
    for row in rows:
        key = _prompt_key(row)
        duplicates += key in seen
        seen.add(key)
    stats["duplicate_prompts"] = duplicates
    if kind == "preference" and rows:
        stats["pairs"] = _pairs(rows, lengths)
    return stats


def _pairs(rows: list[dict[str, Any]], lengths: list[dict[str, int]]) -> dict[str, Any]:
    """Label balance of preference pairs: identical sides, how often the chosen side is the longer one (a reward a
    model can earn by length alone), and pairs whose recorded rewards rank the rejected side higher."""
    n = len(rows)
    out: dict[str, Any] = {
        "identical": sum(1 for r in rows if str(r.get("chosen")).strip() == str(r.get("rejected")).strip()),
        "chosen_longer_share": round(sum(1 for item in lengths if item["chosen"] > item["rejected"]) / max(len(lengths), 1), 4),
    }
    rewarded = [r for r in rows if isinstance(r.get("chosen_reward"), int | float) and isinstance(r.get("rejected_reward"), int | float)]
    if rewarded:
        out["rewarded"] = len(rewarded)
        out["inverted"] = sum(1 for r in rewarded if r["chosen_reward"] < r["rejected_reward"])
        out["tied"] = sum(1 for r in rewarded if r["chosen_reward"] == r["rejected_reward"])
    out["pairs"] = n
    return out
