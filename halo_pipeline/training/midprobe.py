"""`probe_every`: held-out probe tasks scored during training, logged with the curves.

Greedy completions from the model being trained, every N optimizer steps (and once before the
first step), scored by a verifier; `probe/pass@1` and `probe/mean_reward` land in metrics.jsonl and
on the curves, so forgetting shows up while there is still time to stop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from halo_pipeline.training.params import TrainingParams


def callback(params: TrainingParams, tokenizer: Any, chat: bool, metrics_path: Path, log: Any) -> Any:
    from transformers import TrainerCallback

    from halo_pipeline.data import load, refs
    from halo_pipeline.training.sampling import generate
    from halo_pipeline.verifiers import build_verifier

    tasks = load.rows(refs.parse(params.probe_source, paths=False), limit=params.probe_limit)
    verifier = build_verifier(params.probe_verifier or params.verifier)

    def probe(model: Any, step: int) -> None:
        completions = generate(
            model, tokenizer, [t["prompt"] for t in tasks], chat, params.system_prompt, 1, 0.0, params.probe_max_new_tokens, 8, params.seed
        )
        results = verifier.verify_batch([{**t, "completion": c[0]} for t, c in zip(tasks, completions, strict=True)])
        row = {
            "step": step,
            "probe/pass@1": round(sum(r.passed for r in results) / len(results), 4),
            "probe/mean_reward": round(sum(r.reward for r in results) / len(results), 4),
        }
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        log.info("probe at step %d: pass@1 %.3f, mean reward %.3f", step, row["probe/pass@1"], row["probe/mean_reward"])

    class MidTrainingProbe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 0 and state.is_world_process_zero:  # the starting point (a resumed run has it); rank 0 probes
                probe(model, 0)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % params.probe_every == 0 and state.is_world_process_zero:
                probe(model, state.global_step)

    return MidTrainingProbe()
