"""Decontamination's matching: normalisation, exact prompts, n-gram overlap, whole short items; the cached verdict."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from halo_pipeline.data import decontaminate as dc
from halo_pipeline.engine.recipe import Decontaminate

LONG = "Return the list of prime numbers below the given bound, sorted from the smallest to the largest one please."


def test_normalisation_ignores_case_whitespace_and_punctuation() -> None:
    assert dc.normalise("Hello,  World!\n\tIt's FINE…") == "hello world it s fine"
    assert dc.normalise("ＦＵＬＬ width") == "full width"  # NFKC
    assert dc.normalise("def f(x):\n    return x+1") == "def f x return x 1"
    assert dc.normalise("snake_case stays one word") == "snake_case stays one word"
    assert dc.words("  ") == []
    for text in ("a\x00b\x1fc\x7fd", "Ünïcode — “quotes” ＡＢ", "tabs\tand\x0bvt", "under_score-dash", "x²+y³ ½"):
        assert dc.words(text) == dc.normalise(text).split(), text  # the fast path for ASCII finds the same words


def test_ngrams_are_word_windows_after_normalisation() -> None:
    assert dc.ngrams("A b, C d!", 3) == {("a", "b", "c"), ("b", "c", "d")}
    assert dc.ngrams("too short", 3) == set()


def _index(n: int = 13, *texts: str, prompt: str | None = None) -> dc.Index:
    return dc.Index([dc.Item("held", "item-1", prompt, list(texts))], n)


def test_exact_prompt_match_after_normalisation() -> None:
    index = _index(13, "What is the capital of France?", prompt="What is the capital of France?")
    found = index.check([("  what IS the capital of france ", ["Paris"]), ("What is the capital of Spain?", ["Madrid"])])
    assert [(o.row, o.how) for o in found] == [(0, "exact prompt")]


@pytest.mark.parametrize("n", [5, 13])
def test_a_shared_n_gram_overlaps_and_n_minus_one_words_do_not(n: int) -> None:
    held = " ".join(f"w{i}" for i in range(40))
    index = _index(n, held)
    inside = "prefix words " + " ".join(f"W{i}," for i in range(10, 10 + n)) + " suffix"  # case and punctuation differ
    short = "prefix " + " ".join(f"w{i}" for i in range(10, 10 + n - 1)) + " other"
    found = index.check([(None, [short]), (None, ["unrelated", inside])])
    assert [(o.row, o.how) for o in found] == [(1, f"{n}-gram")]
    assert found[0].words == " ".join(f"w{i}" for i in range(10, 10 + n))


def test_n_grams_do_not_span_two_texts_or_two_rows() -> None:
    held = " ".join(f"w{i}" for i in range(26))
    index = _index(13, held)
    first, second = " ".join(f"w{i}" for i in range(7)), " ".join(f"w{i}" for i in range(7, 14))
    assert index.check([(None, [first, second]), (None, [first]), (None, [second])]) == []


def test_a_short_item_matches_when_contained_whole() -> None:
    question = "Which planet is known as the red planet today?"  # 9 words: shorter than 13, at least MIN_WORDS
    index = dc.Index([dc.Item("held", "q", None, [question]), dc.Item("held", "tiny", None, ["Paris"])], 13)
    found = index.check([(None, [f"Trivia! {question} Mars."]), (None, ["Paris is lovely"]), (None, ["which planet is known"])])
    assert [(o.row, o.how, o.item) for o in found] == [(0, "whole item (9 words)", 0)]  # a one-word answer is not evidence


def test_the_hashed_index_agrees_with_plain_n_gram_sets() -> None:
    rng = random.Random(7)
    vocab = [f"v{i}" for i in range(20)]  # a small vocabulary: chance overlaps happen
    held = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 40))) for _ in range(30)]
    train = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    n = 4
    index = dc.Index([dc.Item("h", str(i), None, [t]) for i, t in enumerate(held)], n)
    got = {o.row for o in index.check([(None, [t]) for t in train])}
    held_grams = set().union(*(dc.ngrams(t, n) for t in held))
    whole = {tuple(dc.words(t)) for t in held if dc.MIN_WORDS <= len(dc.words(t)) < n}
    expected = {i for i, t in enumerate(train) if dc.ngrams(t, n) & held_grams or any(w in _windows(t, len(w)) for w in whole)}
    assert got == expected and expected  # some rows overlap, and exactly those are found


def _windows(text: str, k: int) -> set[tuple[str, ...]]:
    ws = dc.words(text)
    return {tuple(ws[i : i + k]) for i in range(len(ws) - k + 1)}


def test_row_texts_cover_prompts_completions_preferences_and_chats() -> None:
    assert dc.row_texts({"id": "1", "prompt": "p", "completion": "c"}) == ("p", ["p", "c"])
    assert dc.row_texts({"prompt": "p", "chosen": "a", "rejected": "b"}) == ("p", ["p", "a", "b"])
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert dc.row_texts({"messages": chat}) == ("u", ["s", "u", "a"])


def test_the_setting_takes_a_mode_alone_or_with_n() -> None:
    assert Decontaminate.model_validate("drop").mode == "drop"
    assert Decontaminate.model_validate(False).mode == "off"  # YAML's bare `off`
    assert Decontaminate.model_validate({"mode": "warn", "n": 8}).n == 8
    assert Decontaminate().model_dump() == {"mode": "stop", "n": 13}
    with pytest.raises(ValueError):
        Decontaminate.model_validate("skip")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_screen_stops_drops_or_warns_and_caches_its_verdict(tmp_path: Path) -> None:
    held = _jsonl(tmp_path / "held.jsonl", [{"id": "h1", "prompt": LONG, "answer": "2, 3, 5"}])
    rows = [{"id": f"r{i}", "prompt": f"clean prompt {i}", "completion": "ok"} for i in range(4)]
    rows.insert(2, {"id": "dirty", "prompt": LONG.upper(), "completion": "2 3 5"})
    train = _jsonl(tmp_path / "train.jsonl", rows)
    sets = [{"label": "probe: tasks_file held.jsonl", "ref": str(held)}]
    src = [dc.Source("dataset", "file:train.jsonl", train, "sft_dataset", None)]
    cache = tmp_path / "cache"

    with pytest.raises(dc.Contaminated) as stopped:
        dc.screen(src, sets, "stop", 13, cache)
    text = str(stopped.value)
    assert "file:train.jsonl: 1 of 5 rows overlap probe: tasks_file held.jsonl (1)" in text and "row 3 (id dirty)" in text
    assert "decontaminate: drop" in text

    warned = dc.screen(src, sets, "warn", 13, cache)
    assert warned is not None and warned.record["cached"] and not warned.replaced  # the stop's verdict, read back
    assert warned.record["sources"][0]["overlapping"] == 1

    dropped = dc.screen(src, sets, "drop", 13, cache)
    assert dropped is not None and not dropped.record["cached"]
    path, sha = dropped.replaced["dataset"]
    kept = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert kept == ["r0", "r1", "r2", "r3"] and dropped.record["sources"][0]["dropped"] == 1
    again = dc.screen(src, sets, "drop", 13, cache)
    assert again is not None and again.record["cached"] and again.replaced["dataset"] == (path, sha)

    assert dc.screen(src, sets, "off", 13, cache) is None
    clean = dc.screen(
        src, [{"label": "other", "ref": str(_jsonl(tmp_path / "o.jsonl", [{"id": "x", "prompt": "nothing alike"}]))}], "stop", 13, cache
    )
    assert clean is not None and clean.record["sources"][0]["overlapping"] == 0


def test_an_unreadable_held_out_set_is_reported_not_fatal(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "train.jsonl", [{"id": "a", "prompt": "p", "completion": "c"}])
    src = [dc.Source("dataset", "file:train.jsonl", train, "sft_dataset", None)]
    sets = [{"label": "eval: lm-eval task nowhere", "kind": "lm_eval", "task": "nowhere"}]  # no loader given
    screened = dc.screen(src, sets, "stop", 13, tmp_path / "cache")
    assert screened is not None
    assert screened.record["held_out"][0]["checked"] is False and "no loader" in screened.record["held_out"][0]["why"]


def test_humaneval_train_is_clean_against_test_and_the_near_duplicates_left_out_are_why() -> None:
    from halo_pipeline.data.humaneval import NEAR_TEST, humaneval_prompts

    index = dc.Index(dc._ref_items({"label": "probe: source humaneval:test", "ref": "humaneval:test"}))
    assert index.check([dc.row_texts(r) for r in humaneval_prompts("train")]) == []
    near = [r for r in humaneval_prompts(None) if r["id"].replace("-", "/") in NEAR_TEST]
    assert len(near) == len(NEAR_TEST) and len(index.check([dc.row_texts(r) for r in near])) == len(NEAR_TEST)


def test_the_plan_collects_the_held_out_sets_and_gives_them_to_train_steps_only() -> None:
    from halo_pipeline.engine.execute import step_calls
    from halo_pipeline.engine.plan import plan_recipe

    root = Path(__file__).resolve().parents[2]
    overrides = ["+decontaminate={mode: warn, n: 10}", "+steps.train.with.probe_every=2", "+steps.train.with.probe_verifier=python_syntax"]
    plan = plan_recipe(str(root / "recipes/tiny_debug.yaml"), overrides)
    labels = [s["label"] for s in plan.held_out]  # humaneval:test, named by the mid-training probe and the probe, once
    assert labels == ["train: probe_source humaneval:test", "eval: lm-eval task halo_arith", "eval: lm-eval task halo_capitals"]
    assert [s["step"] for s in plan.held_out] == ["train", "eval", "eval"]
    calls = step_calls(plan, root / "outputs/unused")
    assert calls["train"].held_out == plan.held_out and calls["train"].decontaminate == {"mode": "warn", "n": 10}
    assert all(not c.held_out for sid, c in calls.items() if sid != "train")


def test_a_probe_multiple_choice_file_is_held_out_prompts_and_choices(tmp_path: Path) -> None:
    from halo_pipeline.tasks import probe

    choice = "the mitochondria is the powerhouse of the cell and it makes most of the energy we use"
    mc = _jsonl(
        tmp_path / "mc.jsonl", [{"id": "q1", "prompt": "Which organelle makes energy?", "choices": [choice, "the nucleus"], "answer": 0}]
    )
    sets = [{**s, "label": f"probe: {s['label']}"} for s in probe.held_out(probe.ProbeParams(mc_file=str(mc)))]
    rows = [
        {"id": "a", "prompt": "which organelle makes ENERGY", "completion": "x"},
        {"id": "b", "prompt": "Tell me a fact.", "completion": "Fact: " + choice.upper() + "!"},
        {"id": "c", "prompt": "Which organelle stores DNA?", "completion": "the nucleus"},
    ]
    src = [dc.Source("dataset", "file:train.jsonl", _jsonl(tmp_path / "train.jsonl", rows), "sft_dataset", None)]
    screened = dc.screen(src, sets, "warn", 13, tmp_path / "cache")
    assert screened is not None
    found = screened.record["sources"][0]
    assert found["overlapping"] == 2 and found["by_held_out"] == {f"probe: mc_file {mc}": 2}
    assert [(x["id"], x["how"]) for x in found["examples"]] == [("a", "exact prompt"), ("b", "13-gram")]


def test_an_instruction_every_held_out_prompt_repeats_is_template_not_evidence() -> None:
    instruction = "Read the passage below and answer the question about it in one short sentence please."  # 15 words
    passage = "Passage {i}: the {c} cat sat on the mat near the door of the old house number {n}."
    held = [dc.Item("held", str(i), None, [instruction + " " + passage.format(i=i, c=c, n=i * 7)]) for i, c in
            enumerate(["red", "blue", "green", "grey", "black", "white", "brown", "pink", "gold", "teal"])]  # fmt: skip
    index = dc.Index(held, 13)
    fresh = f"{instruction} Passage 99: a dog ran in the park."
    copied = held[3].texts[0]
    found = index.check([(None, [fresh]), (None, [f"Copy: {copied[len(instruction) :]} and more words here"])])
    assert [(o.row, o.item) for o in found] == [(1, 3)]  # the shared instruction is not a match; the item's own words are
    few = dc.Index(held[:4], 13)  # four items sharing it: below the five a template needs, still evidence
    assert [o.row for o in few.check([(None, [fresh])])] == [0]
