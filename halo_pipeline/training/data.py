"""Dataset rows (our artifact JSONL) -> the dataset formats TRL's trainers take."""

from __future__ import annotations

from typing import Any


def _user(prompt: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sft_rows(rows: list[dict[str, Any]], chat: bool, system: str | None) -> list[dict[str, Any]]:
    """Prompt-completion rows; conversational when the model has a chat template (TRL applies it)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if "messages" in r:
            out.append({"messages": r["messages"]})
        elif chat:
            out.append({"prompt": _user(str(r["prompt"]), system), "completion": _assistant(str(r["completion"]))})
        else:
            out.append({"prompt": str(r["prompt"]), "completion": str(r["completion"])})
    return out


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
            out.append({"prompt": str(r["prompt"]), "chosen": str(r["chosen"]), "rejected": str(r["rejected"])})
    return out


def prompt_rows(rows: list[dict[str, Any]], chat: bool, system: str | None) -> list[dict[str, Any]]:
    """One row per distinct prompt, keeping the task's own fields (tests, answers) for the reward."""
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = str(r.get("source_id") or r["prompt"])
        if key in seen:
            continue
        task = {k: v for k, v in r.items() if k not in ("prompt", "completion", "reward", "verified", "score", "score_components", "error")}
        prompt: Any = _user(str(r["prompt"]), system) if chat else str(r["prompt"])
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
        prompt: Any = _user(str(r["prompt"]), system) if chat else str(r["prompt"])
        completion: Any = _assistant(str(r["completion"])) if chat else str(r["completion"])
        out.append({"prompt": prompt, "completion": completion, "label": label})
    return out
