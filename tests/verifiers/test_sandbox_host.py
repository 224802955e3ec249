"""The host is never touched through a sample, in either isolation mode: planted links, FIFOs and
devices are never followed or blocked on; code execution is refused without bubblewrap unless the
user opts down (and that is announced); samples never run as root; a SIGKILLed pipeline leaves no
sample process and no work dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_env import bubblewrap_only, needs

import halo_pipeline.sandbox as sandbox
from conftest import cli, write
from halo_pipeline.verifiers import build_verifier, check_spec
from halo_pipeline.verifiers.code import HARNESSES

MODES = [pytest.param("bubblewrap", marks=bubblewrap_only("this mode")), "rlimits"]
ROOT = os.geteuid() == 0


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory outside every sandbox, reachable by the samples' uid (a planted link's target)."""
    path = Path(tempfile.mkdtemp(prefix="halo-host-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def python_script(program: str, mode: str, **limits: object) -> sandbox.RunResult:
    return sandbox.run(
        role="harness_python:script",
        args={"program": textwrap.dedent(program)},
        modules=HARNESSES,
        mode=mode,
        limits=sandbox.Limits(**limits),
    )


# ---------------------------------------------------------------- planted links, FIFOs, devices


@pytest.mark.parametrize("mode", MODES)
def test_io_cases_never_write_through_links_or_block_on_fifos(mode: str, host_dir: Path) -> None:
    """The old harness rewrote and reopened stdin.txt between cases: a link there made the parent write the
    next input outside the sandbox, a FIFO hung it forever. Now every case has a fresh dir and its input on a memfd."""
    target = host_dir / "written-by-the-parent"
    program = f"""
    import os, sys
    n = int(sys.stdin.read())
    for name in ("stdin.txt", "input", "main.py", "prog", "out"):
        for plant in (lambda p: os.symlink({str(target)!r}, p), os.mkfifo):
            try:
                os.remove(name)
            except OSError:
                pass
            try:
                plant(name)
            except OSError:
                pass
    print(n * 2)
    """
    cases = [{"input": str(i), "output": str(2 * i)} for i in range(1, 4)]
    verifier = build_verifier({"name": "execution", "allow_code_execution": True, "timeout_s": 5, "sandbox": mode})
    started = time.monotonic()
    result = verifier.verify({"completion": textwrap.dedent(program), "tests": cases})
    assert result.reward == 1.0, result  # every case saw its own input
    assert time.monotonic() - started < 15
    assert not target.exists() and not target.is_symlink()


@needs("gcc")
@pytest.mark.parametrize("mode", MODES)
def test_compiled_io_cases_get_a_fresh_dir_each(mode: str, host_dir: Path) -> None:
    target = host_dir / "via-link"
    program = (
        '#include <stdio.h>\n#include <unistd.h>\n#include <sys/stat.h>\nint main(void) { int n; if (scanf("%d", &n) != 1) return 1;\n'
        f'  unlink("prog"); symlink("{target}", "prog"); mkfifo("fifo", 0600); FILE *f = fopen("seen", "a");\n'
        '  int seen = 0; if (f) { fseek(f, 0, SEEK_END); seen = (int)ftell(f); fputs("x", f); fclose(f); }\n'
        '  printf("%d\\n", n * 2 + seen); return 0; }\n'
    )
    cases = [{"input": str(i), "output": str(2 * i)} for i in range(1, 4)]
    result = build_verifier({"name": "gcc", "allow_code_execution": True, "sandbox": mode}).verify({"completion": program, "tests": cases})
    assert result.reward == 1.0, result  # no case saw a file an earlier case left
    assert not target.exists()


@pytest.mark.parametrize("mode", MODES)
def test_collected_files_are_never_followed_or_blocked_on(mode: str, host_dir: Path) -> None:
    secret = host_dir / "secret"
    secret.write_text("host data")
    secret.chmod(0o644)
    script = f"ln -s {secret} link; mkfifo fifo; ln -s /dev/zero zero; mknod dev c 1 3 2>/dev/null; echo ok > real"
    started = time.monotonic()
    run = sandbox.run(["/bin/sh", "-c", script], collect=["link", "fifo", "zero", "dev", "real"], mode=mode)
    assert run.files == {"real": b"ok\n"}, run
    assert time.monotonic() - started < 10


def test_devices_cannot_be_made() -> None:
    run = sandbox.run(["/bin/sh", "-c", "mknod dev c 1 3 && echo made"])
    assert "made" not in run.stdout and run.returncode != 0


def test_stdin_cannot_be_rewritten() -> None:
    program = """
    import os, sys
    try:
        os.write(0, b"rewritten")
        print("wrote")
    except OSError:
        print("sealed")
    print(sys.stdin.read())
    """
    run = sandbox.run(role="harness_python:script", args={"program": textwrap.dedent(program)}, modules=HARNESSES, stdin="the input")
    assert run.stdout.split() == ["sealed", "the", "input"], run


# ---------------------------------------------------------------- secure by default


@pytest.fixture
def no_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process cannot find bwrap (as on a fresh machine) and has not opted down."""
    monkeypatch.delenv("HALO_PIPELINE_SANDBOX", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox.bubblewrap._probe_bubblewrap.cache_clear()
    yield
    monkeypatch.undo()
    sandbox.bubblewrap._probe_bubblewrap.cache_clear()


SAMPLE = {"prompt": "def f():\n", "completion": "    return 1\n", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}


def test_without_bubblewrap_code_execution_is_refused_with_the_install_line(no_bubblewrap: None) -> None:
    spec = {"name": "python_tests", "allow_code_execution": True}
    refused = build_verifier(spec).verify(SAMPLE)
    assert refused.reward == 0.0 and "apt-get install bubblewrap" in (refused.error or "") and "sandbox: rlimits" in (refused.error or "")
    assert len((refused.error or "").splitlines()) == 1
    problems = check_spec(spec)  # validation says so before anything runs
    assert problems and "apt-get install bubblewrap" in problems[0][1]  # (key, text): reported at the verifier
    assert sandbox.describe()["error"]


def test_opting_down_to_rlimits_runs_and_warns(no_bubblewrap: None, capfd: pytest.CaptureFixture[str]) -> None:
    sandbox.bubblewrap._warned.clear()
    spec = {"name": "python_tests", "allow_code_execution": True, "sandbox": "rlimits"}
    assert check_spec(spec) == []
    result = build_verifier(spec).verify(SAMPLE)
    assert result.reward == 1.0 and result.details["isolation"] == "rlimits", result
    assert "warning: model-written code runs without OS isolation" in capfd.readouterr().err
    facts = sandbox.describe("rlimits")
    assert facts["isolation"] == "rlimits" and "sandbox: rlimits" in str(facts["warning"])


def test_the_cli_refuses_then_accepts_the_explicit_opt_down(project: Path) -> None:
    samples = write(project / "s.jsonl", json.dumps(SAMPLE) + "\n")
    env = {"PATH": "/nonexistent", "HALO_PIPELINE_SANDBOX": ""}
    refused = cli("verifiers", "run", "python_tests", "--input", str(samples), "--allow-code-execution", cwd=project, env=env)
    assert refused.returncode == 2 and "apt-get install bubblewrap" in refused.stderr
    ok = cli(
        "verifiers", "run", "python_tests", "--input", str(samples), "--allow-code-execution", "--sandbox", "rlimits", cwd=project, env=env
    )
    assert ok.returncode == 0 and "mean reward 1.000" in ok.stdout, ok.stderr
    assert "isolation: rlimits" in ok.stdout and "warning" in ok.stdout + ok.stderr


# ---------------------------------------------------------------- never root, nothing escapes


PROBE = """
import json, os, sys, time
facts = {"uid": os.getuid(), "euid": os.geteuid()}
def attempt(fn):
    try:
        fn()
        return True
    except OSError:
        return False
facts["write_root_dir"] = attempt(lambda: open(os.path.join(ROOT_DIR, "pwned"), "w").write("x"))
facts["read_pipeline_environ"] = attempt(lambda: open(f"/proc/{PIPELINE}/environ", "rb").read())
facts["read_parent_environ"] = attempt(lambda: open(f"/proc/{os.getppid()}/environ", "rb").read())
children = 0
for _ in range(40):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children += 1
facts["forks"] = children
print(json.dumps(facts))
"""


@pytest.mark.parametrize("mode", MODES)
def test_samples_never_run_as_root_and_obey_the_process_limit(mode: str, host_dir: Path) -> None:
    root_dir = host_dir  # owned by the pipeline's uid, open to everyone for reading
    program = PROBE.replace("ROOT_DIR", repr(str(root_dir))).replace("PIPELINE", str(os.getpid()))
    run = python_script(program, mode, processes=4, timeout_s=10)
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    if ROOT:
        assert facts["uid"] != 0 and facts["euid"] != 0
        assert not facts["write_root_dir"] and not (root_dir / "pwned").exists()
    assert not facts["read_pipeline_environ"] and not facts["read_parent_environ"]
    assert facts["forks"] < 4, facts  # RLIMIT_NPROC holds (root would have ignored it)


@bubblewrap_only("network isolation")
def test_no_network_for_any_run() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        program = (
            f"import socket\ns = socket.socket()\ns.settimeout(1)\nprint('connected' if s.connect_ex(('127.0.0.1', {port})) == 0 else 'no')"
        )
        run = python_script(program, "bubblewrap")
    assert run.stdout.strip() == "no", run


ESCAPES = """
import os, subprocess, time
subprocess.Popen(["sleep", "MARK"], start_new_session=True, env={})  # no marker in its environment
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve("/bin/sleep", ["sleep", "MARK"], {})
    os._exit(0)
print("started", flush=True)
"""


def sleepers(mark: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", mark.encode()]:
                    found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("mode", MODES)
def test_what_a_run_starts_ends_with_it(mode: str) -> None:
    mark = str(31_000_000 + os.getpid() % 1000 * 1000 + int(time.time()) % 1000)
    run = python_script(ESCAPES.replace("MARK", mark), mode)
    assert "started" in run.stdout, run
    time.sleep(0.3)
    assert not sleepers(mark)


KILLED_PIPELINE = """
import sys
from halo_pipeline.verifiers import build_verifier
completion = sys.argv[2]
verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 120, "cpu_s": 120, "sandbox": sys.argv[1]})
verifier.verify({"prompt": "def add(a, b):\\n", "completion": completion, "test": "def check(c):\\n    assert c(1, 2) == 3\\n", "entry_point": "add"})
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_sigkilled_pipeline_leaves_no_sample_process_and_no_work_dir(mode: str, host_dir: Path) -> None:
    mark = str(32_000_000 + os.getpid() % 1000 * 1000 + int(time.time()) % 1000)
    body = textwrap.indent(ESCAPES.replace("MARK", mark), "    ") + "    time.sleep(120)\n"
    env = {**os.environ, "TMPDIR": str(host_dir), "HALO_PIPELINE_SANDBOX": mode if mode == "rlimits" else ""}
    pipeline = subprocess.Popen(
        [sys.executable, "-c", KILLED_PIPELINE, mode, body], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while len(sleepers(mark)) < 2:
            assert pipeline.poll() is None, pipeline.stderr.read().decode() if pipeline.stderr else ""
            assert time.monotonic() < deadline, "the sample never started"
            time.sleep(0.1)
        if mode == "rlimits":
            assert any(host_dir.glob("halo-sbx-*")), "rlimits runs work in host dirs (what must be cleaned)"
        pipeline.send_signal(signal.SIGKILL)
        pipeline.wait()
        deadline = time.monotonic() + 15
        while (sleepers(mark) or any(host_dir.glob("halo-sbx-*"))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not sleepers(mark), "sample processes outlived the SIGKILLed pipeline"
        assert not any(host_dir.glob("halo-sbx-*")), "work dirs outlived the SIGKILLed pipeline"
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
        for pid in sleepers(mark):
            os.kill(pid, signal.SIGKILL)


@bubblewrap_only("a tmpfs work dir")
def test_bubblewrap_runs_leave_nothing_on_the_host_disk() -> None:
    host_tmp = Path(tempfile.gettempdir())
    before = set(host_tmp.glob("halo-sbx-*"))
    run = sandbox.run(["/bin/sh", "-c", "pwd; echo x > f; ls"], mode="bubblewrap")
    assert run.stdout.split() == ["/tmp/w", "f"] and set(host_tmp.glob("halo-sbx-*")) <= before


RLIMITS_RECIPE = """
defaults:
  - verifier: python_tests
  - _self_
name: code
verifier:
  allow_code_execution: true
  sandbox: rlimits
steps:
  synthesize:
    with: {source: humaneval, limit: 2, model: tiny, verifier: '${verifier}'}
"""


def test_the_manifest_records_the_opt_down_and_its_warning(project: Path) -> None:
    from halo_pipeline.engine.config import compose
    from halo_pipeline.engine.plan import build_plan
    from halo_pipeline.orchestration.flow import code_execution

    recipe = write(project / "recipes/code.yaml", RLIMITS_RECIPE)
    facts = code_execution(build_plan(compose(recipe, [])))
    assert facts["enabled"] and facts["isolation"] == "rlimits" and "sandbox: rlimits" in str(facts["warning"])
    strict = code_execution(build_plan(compose(recipe, ["verifier.sandbox=bubblewrap"])))
    assert strict["isolation"] == ("rlimits" if os.environ.get("HALO_PIPELINE_SANDBOX") == "rlimits" else "bubblewrap")
