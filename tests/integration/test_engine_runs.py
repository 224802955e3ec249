"""Whole recipes through the real CLI and a real Prefect server: caching, failures, partial runs, replay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import FAKE_RECIPE, TESTS, cli, write

pytestmark = pytest.mark.usefixtures("prefect_api")


def manifest_of(stdout_path: str) -> dict:
    return json.loads((Path(stdout_path.strip().splitlines()[-1]) / "replay.json").read_text())


def test_run_then_cached_rerun(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    first = cli("run", str(recipe), "algorithm=dpo", "-q", cwd=project)
    assert first.returncode == 0, first.stderr
    m1 = manifest_of(first.stdout)
    assert {s["state"] for s in m1["steps"].values()} == {"ran"}
    assert m1["prefect"]["flow_run_id"] and m1["prefect"]["flow_run_id"] in m1["prefect"]["ui_url"]
    run_dir = Path(first.stdout.strip())
    assert (run_dir / "report.html").exists() and "copy" in (run_dir / "report.html").read_text()
    assert run_dir.parent == project / "outputs" / "fake"
    assert (run_dir / "config.yaml").exists() and (run_dir / "steps/copy/data.jsonl").exists()
    rows = (run_dir / "steps/copy/data.jsonl").read_text().splitlines()
    assert json.loads(rows[0])["completion"] == "0-dpo"
    second = cli("run", str(recipe), "algorithm=dpo", "-q", cwd=project)
    m2 = manifest_of(second.stdout)
    assert {s["state"] for s in m2["steps"].values()} == {"cached"}
    assert m2["steps"]["copy"]["cache_key"] == m1["steps"]["copy"]["cache_key"]
    # an override changes only what depends on it
    third = cli("run", str(recipe), "algorithm=sft", "-q", cwd=project)
    m3 = manifest_of(third.stdout)
    assert [m3["steps"][s]["state"] for s in ("make", "copy", "report")] == ["cached", "ran", "ran"]


def test_quiet_stdout_is_the_run_directory_alone(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    res = cli("run", str(recipe), "+steps.make.with.shout=WARNING-from-a-library", "-q", cwd=project)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [str(project / "outputs/fake" / Path(res.stdout.strip()).name)], res.stdout
    assert "WARNING-from-a-library" in res.stderr  # moved, not lost


CACHED_RUN = """
import json, sys
from halo_pipeline.cli import main
code = main(["run", sys.argv[1], "-q", *sys.argv[2:]])
print(json.dumps({"code": code, "prefect_imported": "prefect" in sys.modules}))
"""


def test_a_rerun_with_nothing_to_do_records_a_flow_run_without_prefects_engine(project: Path) -> None:
    import urllib.request

    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    first = cli("run", str(recipe), "-q", cwd=project)
    assert first.returncode == 0, first.stderr

    def rerun(*extra: str, env: dict[str, str] | None = None) -> tuple[dict, dict]:
        out = subprocess.run(
            [sys.executable, "-c", CACHED_RUN, str(recipe), *extra], cwd=project, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}, timeout=300,
        )  # fmt: skip
        lines = out.stdout.strip().splitlines()
        assert out.returncode == 0 and lines, out.stdout + out.stderr
        return json.loads(lines[-1]), manifest_of(lines[-2])

    outcome, m = rerun()
    assert outcome == {"code": 0, "prefect_imported": False}
    assert m["state"] == "completed" and {s["state"] for s in m["steps"].values()} == {"cached"}
    assert m["selected"] == ["copy", "make", "report"] and m["prefect"]["flow_run_name"]
    api = os.environ["PREFECT_API_URL"]

    def post(path: str, body: dict) -> Any:
        request = urllib.request.Request(api + path, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read())

    with urllib.request.urlopen(f"{api}/flow_runs/{m['prefect']['flow_run_id']}", timeout=30) as resp:  # noqa: S310
        flow_run = json.loads(resp.read())
    assert flow_run["state"]["type"] == "COMPLETED" and flow_run["parameters"] == {"recipe": str(recipe), "overrides": [], "tags": []}
    tasks = post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    by_name = {t["name"]: t for t in tasks}
    assert sorted(by_name) == ["copy:fake_steps:copy", "make:fake_steps:make", "report:fake_steps:sft_only"]
    assert {t["state"]["name"] for t in tasks} == {"Cached"}
    ids = {t["id"]: t["name"] for t in tasks}
    assert [ids[u["id"]] for u in by_name["copy:fake_steps:copy"]["task_inputs"]["wait_for"]] == ["make:fake_steps:make"]
    # anything to do, or an option that needs the engine, takes the flow: Prefect is imported
    outcome, m = rerun("steps.copy.with.suffix=-new")
    assert outcome["prefect_imported"] and m["steps"]["copy"]["state"] == "ran"
    outcome, _ = rerun(env={"HALO_PIPELINE_CACHED_FAST_PATH": "0"})
    assert outcome["prefect_imported"]


def test_prefect_shows_cached_states_and_task_names(project: Path) -> None:
    from halo_pipeline.orchestration import flow

    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    flow.run(str(recipe), [], flow.RunOptions())
    flow.run(str(recipe), [], flow.RunOptions())
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(limit=1, sort="START_TIME_DESC")[0]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    states = {t.name: t.state.name for t in tasks}
    assert states == {"make:fake_steps:make": "Cached", "copy:fake_steps:copy": "Cached", "report:fake_steps:sft_only": "Cached"}


def test_tampered_artifact_reruns_only_that_step(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    first = cli("run", str(recipe), "-q", cwd=project)
    run_dir = Path(first.stdout.strip())
    (run_dir / "steps/copy/data.jsonl").write_text("tampered\n")
    second = cli("run", str(recipe), "-q", cwd=project)
    m = manifest_of(second.stdout)
    assert [m["steps"][s]["state"] for s in ("make", "copy", "report")] == ["cached", "ran", "cached"]
    assert (Path(second.stdout.strip()) / "steps/copy/data.jsonl").read_text() != "tampered\n"


def test_failure_keeps_finished_work_and_skips_downstream(project: Path) -> None:
    recipe = write(
        project / "recipes/fail.yaml",
        FAKE_RECIPE.replace("name: fake", "name: fail")
        + """
  side:
    uses: fake_steps:copy
    inputs: {dataset: make.dataset}
""",
    )
    res = cli("run", str(recipe), "+steps.copy.with.fail=true", cwd=project)
    assert res.returncode == 1, res.stderr
    assert "asked to fail" in res.stdout + res.stderr
    run_dir = next((project / "outputs/fail").iterdir())
    m = json.loads((run_dir / "replay.json").read_text())
    assert m["state"] == "failed"
    assert [m["steps"][s]["state"] for s in ("make", "copy", "report", "side")] == ["ran", "failed", "skipped", "ran"]
    assert "asked to fail" in m["steps"]["copy"]["error"]
    assert "ValueError: asked to fail" in (run_dir / "logs/copy.log").read_text()


def test_only_from_until(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    missing = cli("run", str(recipe), "--only", "copy", cwd=project)
    assert missing.returncode == 2 and "step 'make' is not selected and has no cached result" in missing.stderr
    until = manifest_of(cli("run", str(recipe), "--until", "copy", "-q", cwd=project).stdout)
    assert [until["steps"][s]["state"] for s in ("make", "copy", "report")] == ["ran", "ran", "not-selected"]
    only = manifest_of(cli("run", str(recipe), "--only", "report", "--no-cache", "-q", cwd=project).stdout)
    assert [only["steps"][s]["state"] for s in ("make", "copy", "report")] == ["cached", "cached", "ran"]
    frm = manifest_of(cli("run", str(recipe), "--from", "copy", "--no-cache", "-q", cwd=project).stdout)
    assert [frm["steps"][s]["state"] for s in ("make", "copy", "report")] == ["cached", "ran", "ran"]
    typo = cli("run", str(recipe), "--only", "repot", cwd=project)
    assert typo.returncode == 2 and "did you mean 'report'?" in typo.stderr


def test_killed_run_resumes_from_the_cache(project: Path) -> None:
    marker = project / "killed.marker"
    recipe = write(
        project / "recipes/kill.yaml",
        f"""
        name: kill
        steps:
          make: {{uses: "fake_steps:make"}}
          die: {{uses: "fake_steps:die_once", inputs: {{dataset: make.dataset}}, with: {{marker: "{marker}"}}}}
        """,
    )
    killed = cli("run", str(recipe), "-q", cwd=project)
    assert killed.returncode == 137
    cache = project / "outputs/.cache"
    assert list((cache / "partial").iterdir()), "the killed step left its partial work aside"
    resumed = cli("run", str(recipe), "-q", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    m = manifest_of(resumed.stdout)
    assert [m["steps"][s]["state"] for s in ("make", "die")] == ["cached", "ran"]


def test_replay_uses_the_manifest_and_check_compares_digests(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    first = cli("run", str(recipe), "steps.make.with.n=6", "-q", cwd=project)
    run_dir = Path(first.stdout.strip())
    recipe.write_text(FAKE_RECIPE.replace("n: 4", "n: 2"))  # the recipe moved on; the replay must not
    replay = cli("replay", str(run_dir), "-q", cwd=project)
    assert replay.returncode == 0, replay.stderr
    m = manifest_of(replay.stdout)
    assert m["steps"]["make"]["params"]["n"] == 6 and m["replay_of"] == str(run_dir)
    assert {s["state"] for s in m["steps"].values()} == {"cached"}
    check = cli("replay", str(run_dir), "--check", cwd=project)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "all deterministic outputs reproduced" in check.stdout
    checked = json.loads((sorted((project / "outputs/fake").iterdir())[-1] / "replay.json").read_text())
    assert {s["state"] for s in checked["steps"].values()} == {"ran"}  # re-executed, not cached
    # a step whose output changes between runs is caught
    original = json.loads((run_dir / "replay.json").read_text())
    original["steps"]["copy"]["outputs"]["dataset"]["sha256"] = "0" * 64
    (run_dir / "replay.json").write_text(json.dumps(original))
    bad = cli("replay", str(run_dir), "--check", cwd=project)
    assert bad.returncode == 1 and "DIFFERS" in bad.stdout


def test_runs_ls_show_diff(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    a = Path(cli("run", str(recipe), "-q", cwd=project).stdout.strip())
    b = Path(cli("run", str(recipe), "steps.make.with.n=7", "-q", cwd=project).stdout.strip())
    ls = cli("runs", "ls", cwd=project)
    assert ls.returncode == 0 and a.name in ls.stdout and b.name in ls.stdout
    show = cli("runs", "show", str(b), cwd=project)
    assert "rows=7" in show.stdout
    diff = cli("runs", "diff", str(a), str(b), cwd=project)
    assert "steps.make.with.n" in diff.stdout and "+3" in diff.stdout


def test_steps_and_schema_commands(project: Path) -> None:
    steps = cli("steps", cwd=project)
    assert steps.returncode == 0 and "dedup" in steps.stdout and "num_perm" in steps.stdout
    schema = json.loads(cli("schema", cwd=project).stdout)
    assert "dedup" in schema["properties"]["steps"]["properties"]
    dedup_with = schema["$defs"]["step_dedup"]["properties"]["with"]
    threshold, interpolation = dedup_with["properties"]["threshold"]["anyOf"]  # a value, or `${...}`
    assert threshold["exclusiveMaximum"] == 1 and interpolation["pattern"].startswith("^\\$")


def test_retries_apply_to_transient_errors_only(project: Path) -> None:
    recipe = write(
        project / "recipes/flaky.yaml",
        f"""
        name: flaky
        steps:
          transient:
            uses: fake_steps:flaky
            retries: 2
            retry_delay_seconds: 0
            with: {{counter: "{project / "t.count"}", failures: 1}}
          permanent:
            uses: fake_steps:flaky
            retries: 2
            retry_delay_seconds: 0
            with: {{counter: "{project / "p.count"}", failures: 1, error: ValueError}}
          reset:
            uses: fake_steps:flaky
            retries: 2
            retry_delay_seconds: 0
            with: {{counter: "{project / "r.count"}", failures: 1, error: ECONNRESET}}
          disk_full:
            uses: fake_steps:flaky
            retries: 2
            retry_delay_seconds: 0
            with: {{counter: "{project / "d.count"}", failures: 1, error: ENOSPC}}
          denied:
            uses: fake_steps:flaky
            retries: 2
            retry_delay_seconds: 0
            with: {{counter: "{project / "e.count"}", failures: 1, error: EACCES}}
        """,
    )
    res = cli("run", str(recipe), "-q", cwd=project)
    assert res.returncode == 1
    m = json.loads((next((project / "outputs/flaky").iterdir()) / "replay.json").read_text())
    assert m["steps"]["transient"]["state"] == "ran" and (project / "t.count").read_text() == "2"
    assert m["steps"]["permanent"]["state"] == "failed" and (project / "p.count").read_text() == "1"
    # a reset connection is worth a retry; a full disk or a denied permission is not
    assert m["steps"]["reset"]["state"] == "ran" and (project / "r.count").read_text() == "2"
    for sid, count in (("disk_full", "d.count"), ("denied", "e.count")):
        assert m["steps"][sid]["state"] == "failed" and (project / count).read_text() == "1", sid


def test_plan_shows_what_is_cached(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    before = cli("plan", str(recipe), "--format", "json", cwd=project)
    assert before.returncode == 0, before.stderr
    assert {s["status"].split(" (")[0] for s in json.loads(before.stdout).values()} == {"will run"}
    cli("run", str(recipe), "--until", "copy", "-q", cwd=project)
    after = json.loads(cli("plan", str(recipe), "--format", "json", cwd=project).stdout)
    assert after["make"]["status"].startswith("cached") and after["copy"]["status"].startswith("cached")
    assert after["report"]["status"].startswith("will run")
    assert after["copy"]["params"]["suffix"] == "-sft" and after["copy"]["needs"] == ["make"]
    table = cli("plan", str(recipe), "algorithm=dpo", cwd=project)
    assert "copy" in table.stdout and "suffix=-dpo" in table.stdout
    assert "flowchart LR" in cli("plan", str(recipe), "--format", "mermaid", cwd=project).stdout


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_run_within_seconds_with_a_truthful_manifest(project: Path, sig: int, code: int) -> None:
    """Ctrl-C or SIGTERM once: the run stops now (not when the running step would finish), finished steps are
    recorded as ran, the running one as interrupted."""
    recipe = write(
        project / "recipes/slow.yaml",
        """
        name: slow
        steps:
          make:
            uses: fake_steps:make
          copy:
            uses: fake_steps:copy
            inputs: {dataset: make.dataset}
            with: {sleep: 120}
        """,
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "halo-pipeline"), "run", str(recipe)], cwd=project, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as from a terminal: a suite started in the background (`make test &`) hands its children SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 120
    state = None
    while time.time() < deadline and proc.poll() is None:
        found = list(project.glob("outputs/slow/*/logs/copy.state.json"))
        if found and (state := json.loads(found[0].read_text()).get("state")) == "running":
            break
        time.sleep(0.1)
    assert state == "running", proc.communicate()
    sent = time.time()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, out + err
    assert time.time() - sent < 15, "the run waited for the running step instead of stopping"
    m = json.loads(next(project.glob("outputs/slow/*/replay.json")).read_text())
    assert m["state"] == "interrupted"
    assert m["steps"]["make"]["state"] == "ran" and m["steps"]["copy"]["state"] == "interrupted"


def test_runs_diff_between_two_git_revisions_shows_the_recipe_change(project: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)

    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    git("init", "-q")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "start")
    git("add", "recipes")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "v1")
    assert cli("run", str(recipe), "-q", cwd=project).returncode == 0
    recipe.write_text(FAKE_RECIPE.replace("{n: 4}", "{n: 6}"))
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-am", "v2: more rows")
    assert cli("run", str(recipe), "-q", cwd=project).returncode == 0
    res = cli("runs", "diff", "HEAD~1", "HEAD", "--recipe", "fake", cwd=project)
    assert res.returncode == 0, res.stderr
    assert "-    with: {n: 4}" in res.stdout and "+    with: {n: 6}" in res.stdout, res.stdout
    assert "steps.make.with.n" in res.stdout  # and the resolved config, then the metrics
    missing = cli("runs", "diff", "HEAD~2", "HEAD", "--recipe", "fake", cwd=project)
    assert missing.returncode == 2 and "no run of recipe 'fake' was made at HEAD~2" in missing.stderr


def test_one_step_kind_runs_outside_a_recipe(project: Path) -> None:
    """`halo-pipeline step KIND --input n=path --set k=v`: the same run directory, cache and manifest as a recipe."""
    data = write(project / "d.jsonl", '{"id": "a", "prompt": "p", "completion": "x"}\n{"id": "b", "prompt": "p", "completion": "y"}\n')
    first = cli("step", "fake_steps:copy", "--input", f"dataset={data}", "--set", "suffix=?", "-q", cwd=project)
    assert first.returncode == 0, first.stderr
    run_dir = Path(first.stdout.strip())
    m = json.loads((run_dir / "replay.json").read_text())
    assert run_dir.parent.name == "step-fake_steps-copy" and m["steps"]["step"]["state"] == "ran"
    assert (run_dir / "steps/step/data.jsonl").read_text().count('?"') == 2
    again = cli("step", "fake_steps:copy", "--input", f"dataset={data}", "--set", "suffix=?", "-q", cwd=project)
    assert json.loads((Path(again.stdout.strip()) / "replay.json").read_text())["steps"]["step"]["state"] == "cached"
    bad = cli("step", "fake_steps:copy", "--input", f"dataset={data}", "--set", "sufix=?", cwd=project)
    assert bad.returncode == 2 and "--set sufix: unknown param 'sufix'" in bad.stderr and "did you mean 'suffix'" in bad.stderr
