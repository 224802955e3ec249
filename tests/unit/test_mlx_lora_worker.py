"""The MLX training worker does what it trains with and no more: a fixed second of imports, or a progress bar
redrawn every step into a pipe, is a measurable share of a short run (benchmarks/train.py's mlx rows)."""

from __future__ import annotations

import json
import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_grpo_worker_imports_the_verifier_it_rewards_with_and_not_the_algorithms_or_the_runtime() -> None:
    loaded = _modules_after(
        "from halo_pipeline.training import _mlx_lora_worker as w\n"
        "from halo_pipeline.runtimes.mlx_blas import use_fast_blas\n"
        "reward = w.reward_function({'verifier': {'name': 'regex_format', 'pattern': 'return'}, 'rows': [{'task_prompt': 'p'}]})\n"
        "assert reward(['p'], ['return 1'], [''], [0]) == [1.0]"
    )
    assert "halo_pipeline.verifiers.builtin" in loaded
    heavy = {"halo_pipeline.training.algorithms", "halo_pipeline.runtimes.mlx", "halo_pipeline.runtimes.constraints"}
    heavy |= {"halo_pipeline.verifiers.code_native", "halo_pipeline.verifiers.judge", "mlx.core", "torch"}
    assert not heavy & loaded


def test_a_verifier_of_a_later_module_is_still_found_and_the_full_registry_lists_every_one() -> None:
    loaded = _modules_after(
        "from halo_pipeline.verifiers import build_verifier, registry\n"
        "assert build_verifier('rust').name == 'rust'\n"
        "assert {'regex_format', 'math', 'reward_model', 'pytest', 'rust'} <= set(registry())"
    )
    assert "halo_pipeline.verifiers.code_native" in loaded


def test_the_trainers_progress_bar_is_not_drawn_but_its_report_lines_still_are(capsys: object) -> None:
    import types

    from tqdm import tqdm

    from halo_pipeline.training._mlx_lora_worker import no_progress_bar

    trainer = types.SimpleNamespace(tqdm=tqdm)  # as mlx-lm-lora's trainer modules hold it: `from tqdm import tqdm`
    no_progress_bar(trainer)
    bar = trainer.tqdm(range(1, 4), desc="Training", disable=False)  # what train_orpo asks for on rank 0
    assert list(bar) == [1, 2, 3]
    bar.set_postfix({"loss": "1.0"})
    trainer.tqdm.write("Iter 3: loss 1.000")
    out, err = capsys.readouterr()  # type: ignore[attr-defined]
    assert "Training" not in out + err and "Iter 3: loss 1.000" in out


def test_a_worker_that_exits_now_has_written_and_flushed_what_it_reported(tmp_path: object) -> None:
    script = (
        "import sys\n"
        "from halo_pipeline.training.worker_exit import exit_now\n"
        "print('{\"progress\": 3}')\n"  # no flush: exit_now flushes
        "sys.stderr.write('tail line')\n"
        "exit_now()\n"
        "print('never')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == '{"progress": 3}\n' and done.stderr == "tail line"
