"""Model-written code that attacks the sandbox or the test harness: each is contained within its
time budget, scores 0, and leaves no process or file behind."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from sandbox_env import BWRAP, REQUIRE_BWRAP, bubblewrap_only

import halo_pipeline.sandbox as sandbox
from halo_pipeline.verifiers import build_verifier

TIMEOUT = 3.0
ADD_TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
PROMPT = "def add(a, b):\n"


def verify(body: str, **settings):  # type: ignore[no-untyped-def]
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": TIMEOUT, **settings})
    sample = {"prompt": PROMPT, "completion": body, "test": ADD_TEST, "entry_point": "add"}
    started = time.perf_counter()
    result = verifier.verify(sample)
    return result, time.perf_counter() - started


def own_processes() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def from_a_sample(pid: int) -> bool:
    """Started by this test process (however deep), or running as a sample's fresh uid: not another user's process."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        if uid >= 1 << 20 or (uid == os.getuid() != 0 and int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == 1):
            return True  # a fresh sample uid (root pipelines), or one of our own that escaped to init (unprivileged ones)
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return False
    return False


@pytest.fixture
def no_leftovers(tmp_path):  # type: ignore[no-untyped-def]
    """Processes and sandbox dirs before == after (allowing for unrelated churn in this process tree)."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    before_dirs = set(tmp.glob("halo-sbx-*"))
    before = own_processes()
    yield
    time.sleep(0.2)
    new = own_processes() - before
    leftovers = []
    for pid in new:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ("harness" in cmdline or "sleep" in cmdline or "prog" in cmdline) and from_a_sample(pid):
            leftovers.append((pid, cmdline))
    assert not leftovers, f"processes outlived the sample: {leftovers}"
    assert set(tmp.glob("halo-sbx-*")) <= before_dirs, "a sandbox work dir was left behind"


def test_a_correct_solution_passes(no_leftovers):  # type: ignore[no-untyped-def]
    result, _ = verify("    return a + b\n")
    assert result.reward == 1.0 and result.passed, result


ATTACKS = {
    "sys.exit(0) before the tests": "    return 0\nimport sys\nsys.exit(0)\n",
    "os._exit(0) before the tests": "    return 0\nimport os\nos._exit(0)\n",
    "exit inside the function under test": "    import sys\n    sys.exit(0)\n",
    "os._exit inside the function under test": "    import os\n    os._exit(0)\n",
    "object whose __eq__ is always true": "    class Yes:\n        def __eq__(self, other):\n            return True\n    return Yes()\n",
    "int subclass with a rigged __eq__": "    class I(int):\n        def __eq__(self, o):\n            return True\n    return I(0)\n",
    "monkeypatching the harness's reporter": (
        "    import sys\n"
        "    f = sys._getframe(1)\n"
        "    while '__halo_ok' not in f.f_globals:\n"
        "        f = f.f_back\n"
        "    for k in range(10):\n"
        "        f.f_globals['__halo_ok'](k)\n"
        "    return 0\n"
    ),
    "redefining check() to assert nothing": "    return 0\ndef check(candidate):\n    pass\n",
    "patching builtins to hide failures": ("    return 0\nimport builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"),
    "forging a result record without the nonce": (
        "    return 0\nimport os\nfor fd in range(3, 20):\n"
        '    try:\n        os.write(fd, b\'{"passed": 2, "total": 2}\\n\')\n    except OSError:\n        pass\n'
    ),
    "reading the nonce file": "    return 0\nprint(open('.nonce').read())\n",
    "infinite loop (pure Python)": "    while True:\n        pass\n",
    "infinite loop in C code (regex backtracking)": "    import re\n    re.match(r'(a+)+$', 'a' * 64 + 'b')\n    return a + b\n",
    "sleeping past the timeout": "    import time\n    time.sleep(60)\n    return a + b\n",
    "memory bomb": "    x = bytearray(8 * 1024 ** 3)\n    return a + b\n",
    "memory bomb, growing": "    x = []\n    while True:\n        x.append(bytearray(10 ** 7))\n",
    "fork bomb": ("    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"),
    "closing its pipes, then looping": "    import os\n    for fd in range(1, 20):\n        try:\n            os.close(fd)\n        except OSError:\n            pass\n    while True:\n        pass\n",
    "huge output": "    import sys\n    while True:\n        sys.stdout.write('x' * 65536)\n",
    "background process that outlives the sample": (
        "    import subprocess\n    subprocess.Popen(['sleep', '300'], start_new_session=True)\n    import os\n    os._exit(0)\n"
    ),
    "daemonized double fork": (
        "    import os, time\n"
        "    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n            time.sleep(300)\n        os._exit(0)\n"
        "    os._exit(0)\n"
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_attack_is_contained_and_scores_zero(attack, no_leftovers):  # type: ignore[no-untyped-def]
    result, elapsed = verify(ATTACKS[attack])
    assert result.reward == 0.0 and not result.passed, result
    assert elapsed < TIMEOUT + 5, f"took {elapsed:.1f}s for a {TIMEOUT}s budget"


@bubblewrap_only("file-system and network isolation")
def test_reading_outside_the_work_dir_fails(tmp_path, no_leftovers):  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    for target in (str(secret), "/etc/passwd", str(Path.home() / ".bashrc"), os.getcwd()):
        body = f"    try:\n        open({target!r}).read()\n        return a + b\n    except OSError:\n        return -1\n"
        result, _ = verify(body)
        assert result.reward == 0.0, f"could read {target}"


@bubblewrap_only("file-system isolation")
def test_writing_outside_the_work_dir_fails(tmp_path, no_leftovers):  # type: ignore[no-untyped-def]
    target = tmp_path / "written.txt"
    body = f"    try:\n        open({str(target)!r}, 'w').write('x')\n        return a + b\n    except OSError:\n        return -1\n"
    result, _ = verify(body)
    assert result.reward == 0.0 and not target.exists()
    for path in ("/usr/halo-pwned", "/tmp/../usr/x", os.path.join(os.getcwd(), "pwned")):
        body = f"    try:\n        open({path!r}, 'w').write('x')\n        return a + b\n    except OSError:\n        return -1\n"
        assert verify(body)[0].reward == 0.0 and not os.path.exists(path)


@bubblewrap_only("network isolation")
def test_no_network(no_leftovers):  # type: ignore[no-untyped-def]
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    body = (
        "    import socket\n    s = socket.socket()\n    s.settimeout(1)\n"
        f"    return a + b if s.connect_ex(('127.0.0.1', {port})) == 0 else -1\n"
    )
    try:
        result, _ = verify(body)
    finally:
        server.close()
    assert result.reward == 0.0


def test_secrets_are_not_in_the_environment(monkeypatch, no_leftovers):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    body = "    import os\n    return a + b if 'secret' in repr(dict(os.environ)) else -1\n"
    assert verify(body)[0].reward == 0.0
    body = "    import os\n    return a + b if 'secret' in open('/proc/1/environ').read() + open('/proc/self/environ').read() else -1\n"
    assert verify(body)[0].reward == 0.0


def test_partial_credit_is_the_fraction_of_tests_passed(no_leftovers):  # type: ignore[no-untyped-def]
    result, _ = verify("    return 3\n")
    assert result.reward == 0.5 and not result.passed
    assert result.details["passed"] == 1 and result.details["total"] == 2
    assert result.details["failures"][0]["source"] == "assert candidate(2, 2) == 4"


@pytest.mark.skipif(not REQUIRE_BWRAP, reason="only where bubblewrap is required (CI)")
def test_bubblewrap_isolation_is_in_use() -> None:
    assert BWRAP, sandbox.isolation("bubblewrap").reason


def test_the_manifest_facts_name_the_isolation():  # type: ignore[no-untyped-def]
    facts = sandbox.describe()
    assert facts["isolation"] in ("bubblewrap", "rlimits")
    assert (facts["warning"] is None) == (facts["isolation"] == "bubblewrap")


@bubblewrap_only("read-only binds")
def test_read_only_binds_under_tmp_are_visible(tmp_path: Path) -> None:
    """A Python or venv that lives under /tmp (a CI checkout) must stay reachable over the private /tmp."""
    tool = tmp_path / "tool"
    tool.mkdir()
    (tool / "data.txt").write_text("visible")
    nonce = sandbox.new_nonce()
    code = f"import os; os.write(int(__import__('sys').argv[1]), ({nonce!r} + open({str(tool / 'data.txt')!r}).read() + '\\n').encode())"
    run = sandbox.run([sys.executable, "-I", "-S", "-c", code, "{result_fd}"], ro_binds=[str(tool)], nonce=nonce)
    assert run.records == ["visible"], run.stderr
    if BWRAP or REQUIRE_BWRAP:
        write = sandbox.run([sys.executable, "-I", "-S", "-c", f"open({str(tool / 'x')!r}, 'w')"], ro_binds=[str(tool)])
        assert write.returncode != 0 and not (tool / "x").exists()  # read-only
