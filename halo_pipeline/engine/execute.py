"""Run one step: compute its cache key, reuse a verified cached result, or run it and commit atomically.

Nothing here knows about Prefect; `runner.py` wraps `execute` in a Prefect task.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from halo_pipeline.engine import registry
from halo_pipeline.engine.cache import (
    RECORD,
    Cache,
    DigestMemo,
    atomic_write_json,
    canonical_json,
    default_cache_dir,
    digest,
    remove,
    sha256_text,
)
from halo_pipeline.engine.graph import Ref
from halo_pipeline.engine.step import SCRATCH, Artifact, Params, RunContext, StepKind


@dataclass
class OutputRecord:
    type: str
    path: str  # absolute path of the file or directory
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    id: str
    kind: str
    state: str  # ran | cached | failed | skipped | interrupted
    key: str | None = None
    outputs: dict[str, OutputRecord] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> sha256
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    waited_for: str | None = None  # another process that was computing the same key; this run reused its result
    decontamination: dict[str, Any] | None = None  # a train step's inputs checked against the recipe's held-out sets

    @property
    def seconds(self) -> float:
        return (self.ended or 0) - (self.started or 0) if self.started else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepCall:
    """Everything a worker (thread, process or dask) needs to run one step; picklable."""

    id: str
    uses: str
    params: Params  # validated once, with the recipe; the step gets this very object
    inputs: dict[str, Ref | Path]  # input name -> another step's output, or an external file
    input_types: dict[str, str]
    output_types: dict[str, str]
    seed: int
    run_dir: str
    cache_root: str
    cached: bool = True  # False: run into the run directory and leave the cache untouched (--no-cache, `cache: false`, replay --check)
    tracking: dict[str, Any] = field(default_factory=dict)  # the experiment tracker (RunContext.tracking); not in the cache key
    held_out: list[dict[str, Any]] = field(default_factory=list)  # the recipe's held-out sets, for a step that trains
    decontaminate: dict[str, Any] = field(default_factory=dict)  # the recipe's `decontaminate:` (mode, n)

    def kind(self) -> StepKind:
        return registry.get(self.uses)


def step_calls(plan: Any, run_dir: Path, no_cache: bool = False, check: bool = False) -> dict[str, StepCall]:
    """One StepCall per planned step. With `check`, deterministic steps run again outside the cache."""
    cache_root = str(default_cache_dir())
    held_out = plan.held_out
    settings = plan.recipe.decontaminate.model_dump()
    return {
        sid: StepCall(
            id=sid,
            uses=ps.spec.uses or sid,
            params=ps.params,
            inputs=ps.inputs,
            input_types=ps.input_types,
            output_types=ps.output_types,
            seed=plan.recipe.seed,
            run_dir=str(run_dir.resolve()),
            cache_root=cache_root,
            cached=ps.spec.cache and not no_cache and not (check and ps.kind.is_deterministic(ps.params)),
            held_out=held_out if ps.kind.decontaminate else [],
            decontaminate=settings,
        )
        for sid, ps in plan.steps.items()
    }


class StepError(RuntimeError):
    """A step raised; carries the concise message recorded in the manifest and whether a retry may help."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient
        self.decontamination: dict[str, Any] | None = None


# errno values of failures that a retry can fix; a full disk, a missing file or a denied permission cannot
TRANSIENT_ERRNOS = {
    errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
    errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE,
}  # fmt: skip
TRANSIENT_NAMES = {"TransportError", "APIConnectionError", "APITimeoutError", "RemoteProtocolError"}  # httpx / openai


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth a retry: network trouble and timeouts, not bad input or a broken disk."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in TRANSIENT_ERRNOS
    return any(cls.__name__ in TRANSIENT_NAMES for cls in type(exc).__mro__)


_lib_versions: dict[str, str] = {}
_digest_memos: dict[str, DigestMemo] = {}


def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        if name not in _lib_versions:
            try:
                _lib_versions[name] = version(name)
            except PackageNotFoundError:
                _lib_versions[name] = "not-installed"
        out[name] = _lib_versions[name]
    return out


def external_digest(path: Path) -> str:
    """Digest of a file or directory outside the cache (a `file:` input, a model), remembered by stat
    signature across processes (`DigestMemo`): big models are hashed once per content."""
    root = str(default_cache_dir())
    if root not in _digest_memos:
        _digest_memos[root] = DigestMemo(Path(root))
    return _digest_memos[root].digest(path)


def input_artifacts(call: StepCall, upstream: dict[str, StepResult]) -> dict[str, Artifact]:
    arts = {}
    for name, ref in call.inputs.items():
        if isinstance(ref, Path):
            arts[name] = Artifact(type=call.input_types.get(name, "file"), path=ref, sha256=external_digest(ref))
        else:
            rec = upstream[ref.step].outputs[ref.output]
            arts[name] = Artifact(type=rec.type, path=Path(rec.path), meta=rec.meta, sha256=rec.sha256)
    return arts


def cache_key(call: StepCall, kind: StepKind, inputs: dict[str, Artifact]) -> str:
    params = call.params
    material = {
        "kind": kind.name,
        "version": kind.version,
        "params": params.model_dump(mode="json"),
        "inputs": {n: a.sha256 for n, a in sorted(inputs.items())},
        "libraries": library_versions(("halo-pipeline", *kind.libraries)),
        "fingerprint": kind.fingerprint(params) if kind.fingerprint else {},
    }
    return sha256_text(canonical_json(material))


def _result_from_record(call: StepCall, kind: StepKind, key: str, record: dict[str, Any], entry: Path, state: str) -> StepResult:
    outputs = {
        n: OutputRecord(type=o["type"], path=str(entry / o["path"]), sha256=o["sha256"], meta=o.get("meta", {}))
        for n, o in record["outputs"].items()
    }
    return StepResult(
        id=call.id,
        kind=kind.name,
        state=state,
        key=key,
        outputs=outputs,
        inputs=record.get("inputs", {}),
        metrics=record.get("metrics", {}),
        summary=record.get("summary", []),
        started=record.get("started"),
        ended=record.get("ended"),
    )


def link_into_run(call: StepCall, target: Path, cache: Cache) -> None:
    """`<run>/steps/<id>` -> the cache entry; the run is registered so that `cache gc` keeps what it points at."""
    link = Path(call.run_dir) / "steps" / call.id
    link.parent.mkdir(parents=True, exist_ok=True)
    cache.register_run(Path(call.run_dir))
    if link.resolve() == target.resolve():
        return
    remove(link)
    os.symlink(target, link, target_is_directory=True)


def cached_result(call: StepCall, upstream: dict[str, StepResult]) -> tuple[str, StepResult | None]:
    """The step's cache key, and its verified cached result when there is one."""
    kind = call.kind()
    inputs = input_artifacts(call, upstream)
    try:
        inputs, _ = screen_inputs(call, kind, inputs)
    except StepError:  # the run would stop before this step: nothing of it is reusable
        return cache_key(call, kind, inputs), None
    key = cache_key(call, kind, inputs)
    if not call.cached:
        return key, None
    return key, _lookup(call, kind, key, Cache(Path(call.cache_root)))


def screen_inputs(call: StepCall, kind: StepKind, inputs: dict[str, Artifact]) -> tuple[dict[str, Artifact], dict[str, Any] | None]:
    """Before a step that trains, cached or not: its inputs against the recipe's held-out sets (`decontaminate:`).
    Returns the inputs (rows dropped, when the recipe says so) and the check's record; raises StepError to stop."""
    if kind.decontaminate is None or not call.held_out or call.decontaminate.get("mode", "stop") == "off":
        return inputs, None
    labels = {n: f"file:{r}" if isinstance(r, Path) else str(r) for n, r in call.inputs.items()}
    root = Path(call.cache_root) if call.cached else Path(call.run_dir) / "logs" / "decontaminate"  # --no-cache: the cache untouched
    try:
        found = kind.decontaminate(call.params, inputs, labels, call.held_out, call.decontaminate, root)
    except Exception as exc:
        write_state(call, "failed", error=str(exc))
        error = StepError(f"{call.id} ({kind.name}): {type(exc).__name__}: {exc}", transient=is_transient(exc))
        error.decontamination = getattr(exc, "record", None)  # what a stop found, for the manifest
        raise error from exc
    return found if found is not None else (inputs, None)


def _lookup(call: StepCall, kind: StepKind, key: str, cache: Cache) -> StepResult | None:
    record = cache.lookup(key)
    return None if record is None else _result_from_record(call, kind, key, record, cache.entry(key), "cached")


def write_state(call: StepCall, state: str, **extra: Any) -> None:
    """A small per-step state file the terminal progress view polls (works across processes)."""
    path = Path(call.run_dir) / "logs" / f"{call.id}.state.json"
    with contextlib.suppress(OSError):
        atomic_write_json(path, {"state": state, "time": time.time(), **extra})


def execute(call: StepCall, upstream: dict[str, StepResult]) -> StepResult:
    """Run a step (or reuse its verified cache entry) and return its result; raises StepError on failure.

    A cache miss takes the key's lock, so that concurrent runs compute a key once: whoever waited
    finds the entry the holder committed and reuses it.
    """
    kind = call.kind()
    inputs, checked = screen_inputs(call, kind, input_artifacts(call, upstream))
    result = _execute(call, kind, inputs)
    result.decontamination = checked
    return result


def _execute(call: StepCall, kind: StepKind, inputs: dict[str, Artifact]) -> StepResult:
    key = cache_key(call, kind, inputs)
    if not call.cached:
        out_dir = Path(call.run_dir) / "steps" / call.id
        remove(out_dir)
        out_dir.mkdir(parents=True)
        record = _run(call, kind, key, inputs, out_dir)
        remove(out_dir / SCRATCH)
        return _result_from_record(call, kind, key, record, out_dir, "ran")
    cache = Cache(Path(call.cache_root))
    hit = _lookup(call, kind, key, cache)  # verified outside the lock: concurrent reruns hash in parallel
    waited: list[str] = []

    def on_wait(holder: str) -> None:
        waited.append(holder)
        write_state(call, "waiting", holder=holder)

    with cache.lock(key, on_wait=on_wait):
        if hit is None or not (cache.entry(key) / RECORD).is_file():
            hit = _lookup(call, kind, key, cache)  # the run we waited for may have committed it
        if hit is None:
            work = cache.partial(key)
            if not kind.resumable:
                remove(work)  # leftovers of a killed run must not leak into this result
            work.mkdir(parents=True, exist_ok=True)
            record = _run(call, kind, key, inputs, work)
            entry = cache.commit(key, record)
            remove(entry / SCRATCH)  # checkpoints and the like go only once the result is committed
            link_into_run(call, entry, cache)
            return _result_from_record(call, kind, key, record, entry, "ran")
        # linked under the lock, so `cache gc` cannot remove the entry between the check and the link
        link_into_run(call, cache.entry(key), cache)
        cache.touch(key)
    write_state(call, "cached", seconds=0)
    hit.waited_for = waited[0] if waited else None
    return hit


def empty_inputs(call: StepCall, inputs: dict[str, Artifact]) -> str | None:
    """Inputs that came with no rows (their step's `meta.rows` is 0), with the reason their step gave
    (`meta.empty_because`): what a step that then fails or makes nothing names as the cause upstream."""
    found = []
    for name, artifact in inputs.items():
        if artifact.meta.get("rows") == 0:
            why = artifact.meta.get("empty_because")
            found.append(f"input '{name}' ({call.inputs.get(name)}) has no rows" + (f": {why}" if why else ""))
    return "; ".join(found) or None


def _run(call: StepCall, kind: StepKind, key: str, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    """Call the step kind with its work dir and logger; returns the record of what it made."""
    log_path = Path(call.run_dir) / "logs" / f"{call.id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"halo_pipeline.steps.{call.id}")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    started = time.time()
    ctx = RunContext(
        step_id=call.id,
        kind=kind.name,
        out_dir=out_dir,
        run_dir=Path(call.run_dir),
        seed=call.seed,
        log=logger,
        on_progress=lambda done, total, **figures: write_state(call, "running", started=started, done=done, total=total, **figures),
        tracking=call.tracking,
    )
    params = call.params
    write_state(call, "running", started=started)
    try:
        produced = kind.fn(params, inputs, ctx) or {}
    except Exception as exc:
        logger.error("step failed:\n%s", traceback.format_exc())
        cause = empty_inputs(call, inputs)  # the error names the cause upstream: an input that came empty, and why
        error = f"{exc} (upstream: {cause})" if cause else str(exc)
        write_state(call, "failed", error=error)
        raise StepError(f"{call.id} ({kind.name}): {type(exc).__name__}: {error}", transient=is_transient(exc)) from exc
    finally:
        logger.removeHandler(handler)
        handler.close()
    ended = time.time()
    missing = [o for o in kind.outputs if o not in produced]
    if missing:
        write_state(call, "failed", error=f"missing outputs {missing}")
        raise StepError(f"{call.id} ({kind.name}) did not produce outputs: {', '.join(missing)}")
    outputs = {}
    for name, value in produced.items():
        p = Path(value)
        p = p if p.is_absolute() else out_dir / p
        outputs[name] = {
            "type": call.output_types.get(name, "file"),
            "path": str(p.relative_to(out_dir)),
            "sha256": digest(p),
            "meta": ctx.meta.get(name, {}),
        }
        meta: dict[str, Any] = ctx.meta.get(name, {})
        if meta.get("rows") == 0 and "empty_because" not in meta and (cause := empty_inputs(call, inputs)):
            outputs[name]["meta"] = {**meta, "empty_because": cause}  # an empty output of an empty input: why, passed on
    write_state(call, "ran", seconds=ended - started)
    return {
        "kind": kind.name,
        "version": kind.version,
        "key": key,
        "params": params.model_dump(mode="json"),
        "inputs": {n: a.sha256 for n, a in inputs.items()},
        "outputs": outputs,
        "metrics": ctx.metrics,
        "summary": ctx.summary_lines,
        "started": started,
        "ended": ended,
    }
