"""The gate's statistics against an independent computation (scipy), and the verdicts they give."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from halo_pipeline.evaluation import stats

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize(("k", "m"), [(0, 1), (1, 1), (0, 6), (6, 6), (3, 10), (5, 20), (17, 40), (1, 200), (150, 300)])
def test_exact_interval_and_test_match_scipy(k: int, m: int) -> None:
    low, high = stats.clopper_pearson(k, m)
    ci = scipy_stats.binomtest(k, m).proportion_ci(confidence_level=0.95, method="exact")
    assert low == pytest.approx(ci.low, abs=1e-9) and high == pytest.approx(ci.high, abs=1e-9)
    assert stats.sign_test(k, m) == pytest.approx(scipy_stats.binomtest(k, m, 0.5).pvalue, abs=1e-12)


def test_one_changed_task_of_ten_is_inconclusive_and_ten_are_improved() -> None:
    """The quickstart's case: pass@1 0.0 -> 0.1 on 10 tasks is one task, which decides nothing."""
    one = stats.compare([0.0] * 10, [1.0] + [0.0] * 9)
    assert (one.delta, one.gained, one.lost, one.verdict, one.method) == (0.1, 1, 0, "inconclusive", "exact")
    # by hand: the exact interval of 1 success in 1 trial is [0.025, 1]; times m/N = 1/10, mapped as 2*theta - 1
    assert one.low == pytest.approx(0.1 * (2 * 0.025 - 1), abs=1e-9) and one.high == pytest.approx(0.1)
    assert one.p_value == 1.0
    ten = stats.compare([0.0] * 10, [1.0] * 10)
    assert ten.verdict == "improved" and ten.p_value == pytest.approx(2 * 0.5**10) and ten.low > 0
    assert stats.compare([1.0] * 10, [0.0] * 10).verdict == "regressed"
    assert stats.compare([1.0] * 10, [1.0] * 10).verdict == "inconclusive"  # nothing changed


@pytest.mark.parametrize("gained", range(0, 13))
def test_the_verdict_is_the_exact_test_and_the_interval_agrees(gained: int) -> None:
    """Against scipy's exact binomial test on the discordant pairs (McNemar), with 12 changed tasks of 30."""
    lost = 12 - gained
    base = [1.0] * lost + [0.0] * gained + [1.0] * 9 + [0.0] * 9
    cand = [0.0] * lost + [1.0] * gained + [1.0] * 9 + [0.0] * 9
    found = stats.compare(base, cand)
    p = scipy_stats.binomtest(gained, 12, 0.5).pvalue
    expected = "inconclusive" if p >= 0.05 else "improved" if gained > lost else "regressed"
    assert found.verdict == expected and found.p_value == pytest.approx(p)
    assert stats.verdict(found.low, found.high) == found.verdict  # the interval excludes 0 exactly when the test rejects
    assert found.low <= found.delta <= found.high


def test_graded_metrics_get_a_paired_bootstrap_that_matches_scipy() -> None:
    base = [((i * 37) % 11) / 10 for i in range(30)]
    cand = [min(1.0, b + ((i * 13) % 7 - 2) / 10) for i, b in enumerate(base)]
    found = stats.compare(base, cand)
    assert found.method == "bootstrap" and found.gained is None
    diffs = [c - b for b, c in zip(base, cand, strict=True)]
    ref = scipy_stats.bootstrap(
        (diffs,), lambda x: sum(x) / len(x), vectorized=False, n_resamples=10_000, method="percentile", random_state=1
    )
    # two independent Monte Carlo estimates of the same percentiles: with 10,000 resamples the 2.5% quantile of the
    # mean of 30 differences (sd ~0.2) varies by ~0.0015 (sqrt(q(1-q)/B) / density); 0.01 is more than 4 of those apart
    assert found.low == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert found.high == pytest.approx(ref.confidence_interval.high, abs=0.01)
    assert stats.compare(base, cand) == found  # a fixed seed: the same interval every time
    few = stats.compare([0.2, 0.4], [0.5, 0.7])  # every difference +0.3: a bootstrap of 2 tasks says nothing
    assert few.verdict == "inconclusive"


def test_tasks_needed_is_the_smallest_n_with_the_power() -> None:
    assert stats._min_changed(0.95) == stats.MIN_DISCORDANT == 6  # 2 * 0.5**6 < 0.05 <= 2 * 0.5**5
    for effect in (0.05, 0.1, 0.3):
        n = stats.tasks_needed(effect)
        assert n is not None
        assert scipy_stats.binom.sf(5, n, effect) >= 0.8 > scipy_stats.binom.sf(5, n - 1, effect)
    assert stats.tasks_needed(0.0) is None


def test_mean_and_t_interval_across_seeds_match_scipy() -> None:
    values = [0.30, 0.40, 0.35, 0.50]
    found = stats.mean_interval(values)
    mean, sem = sum(values) / 4, scipy_stats.sem(values)
    low, high = scipy_stats.t.interval(0.95, 3, loc=mean, scale=sem)
    assert (
        found["mean"] == pytest.approx(mean)
        and found["low"] == pytest.approx(low, abs=1e-6)
        and found["high"] == pytest.approx(high, abs=1e-6)
    )
    for df in (1, 2, 5, 29, 200):
        assert stats.t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-8)
    assert stats.mean_interval([0.5])["low"] is None and not math.isnan(stats.mean_interval([0.5, 0.5])["low"])


def test_a_seed_sweep_summarises_each_metric_with_mean_and_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`-m seed=0,1,2 lr=...`: one group per setting of the other overrides, each metric's mean and t interval."""
    import json

    from halo_pipeline.orchestration.sweep import write_summary

    jobs, values = [], {"1e-4": [0.30, 0.40, 0.35], "1e-3": [0.10, 0.20, 0.10]}
    for n, (lr, seed) in enumerate((lr, seed) for lr in values for seed in range(3)):
        run_dir = tmp_path / str(n)
        run_dir.mkdir()
        metrics = {"pass@1": values[lr][seed], "tasks": 10}
        (run_dir / "replay.json").write_text(json.dumps({"steps": {"probe": {"metrics": metrics}}}))
        jobs.append({"job": n, "overrides": [f"lr={lr}", f"seed={seed}"], "state": "completed", "objective": None, "run_dir": str(run_dir)})
    write_summary(jobs, "maximize", quiet=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    groups = {tuple(g["overrides"]): g for g in summary["across_seeds"]}
    found = groups[("lr=1e-4",)]["metrics"]["probe.pass@1"]
    low, high = scipy_stats.t.interval(0.95, 2, loc=0.35, scale=scipy_stats.sem(values["1e-4"]))
    assert (
        found["n"] == 3
        and found["mean"] == pytest.approx(0.35)
        and (found["low"], found["high"]) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))
    )
    assert groups[("lr=1e-4",)]["jobs"] == [0, 1, 2] and groups[("lr=1e-4",)]["metrics"]["probe.tasks"]["std"] == 0
    printed = capsys.readouterr().out
    assert "across 3 seeds (lr=1e-4)" in printed and "probe.pass@1: 0.35 [" in printed and "probe.tasks" not in printed
