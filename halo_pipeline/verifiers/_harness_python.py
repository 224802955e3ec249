"""Runs inside the sandbox (preloaded into the zygote, never imported by the pipeline): Python tests
that the solution's code cannot reach.

Each sample is two sandboxed processes, started together and joined by two pipes:

- `candidate` runs the solution: execs the program, then answers requests: what a name is, a call
  with plain-data arguments, an attribute of an object it returned. Answers are plain data. It is
  forked before anything of the tests reached the process it is forked from (the driver's payload
  is read after the fork): there is no test, expected value or driver argument in its memory.
- `driver` runs the tests, in a process the solution's code never runs in. It execs the task's
  prompt (task data: its bindings, e.g. HumanEval/32's `poly` or a `from math import *`, are the
  tests') and the test code, with only the declared entry points (see `driver`) bound to proxies
  that call the candidate. Replies are decoded by a safe decoder (tagged JSON, size- and
  depth-capped; never pickle). The driver alone counts (`Units`) and writes the record, on fd 3.

So the candidate can lie only about its own return values, which is what the tests check: frame
walking, patched builtins, a rigged `__eq__`, `exit()`, signal handlers and forged output reach
nothing that decides the score. A candidate that exits, crashes, hangs past the deadline or breaks
the protocol fails the tests still to run. Objects that are not plain data stay in the candidate:
the driver gets an opaque handle whose attributes and calls go back to the candidate, and which
compares only by identity and has no truth value.

fds: driver 3 = record, 4 = replies in, 5 = requests out; candidate 4 = requests in, 5 = replies out.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import importlib
import json
import marshal
import os
import select
import signal
import struct
import sys
import time
from typing import Any

MAX_FRAME = 16 << 20
MAX_DEPTH = 200
PLAIN_SCALARS = (str, bool, type(None), float)
# exceptions the candidate may raise into the tests as themselves (others arrive as SolutionError)
RAISABLE = {
    name: obj
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, (StopIteration, StopAsyncIteration, Warning))
}


class NotPlain(TypeError):
    pass


class SolutionError(Exception):
    """An exception the solution raised that is not a builtin one."""


class SolutionGone(BaseException):
    """The solution exited, crashed, hung past the deadline or broke the protocol. A BaseException,
    so that a test's `except Exception:` does not turn a dead solution into a pass."""


class SolutionExit(BaseException):
    """The solution raised SystemExit, KeyboardInterrupt or another BaseException that is not an
    Exception: as in one process, a test's `except Exception:` does not catch it."""


class DeadlinePassed(BaseException):
    """The driver's own deadline: never counted as one failed statement, it ends the tests."""


# ---------------------------------------------------------------- plain-data codec


def encode(value: Any, handles: dict[int, int] | None = None, depth: int = 0) -> Any:
    """Plain data as JSON values; non-JSON types tagged ({"t": tuple}, {"d": dict}, ...). Exact types
    only: an int subclass with a rigged __eq__ is not plain. `handles` maps id(obj) -> handle for the
    driver's proxies of candidate objects passed back as arguments."""
    kind = type(value)
    if depth > MAX_DEPTH:
        raise NotPlain("nested too deeply")
    if kind in PLAIN_SCALARS:
        return value
    if kind is int:
        return value if -(1 << 62) < value < (1 << 62) else {"x": format(value, "x")}
    if kind is list:
        return [encode(v, handles, depth + 1) for v in value]
    if kind is tuple:
        return {"t": [encode(v, handles, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, handles, depth + 1), encode(v, handles, depth + 1)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {"s" if kind is set else "f": [encode(v, handles, depth + 1) for v in value]}
    if kind is bytes or kind is bytearray:
        return {"b" if kind is bytes else "y": value.decode("latin-1")}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    if handles is not None and id(value) in handles:
        return {"h": handles[id(value)]}
    if LOOSE and (plain := _as_plain(value)) is not None:
        return encode(plain[0], handles, depth + 1)
    raise NotPlain(f"a {kind.__name__} is not plain data")


LOOSE = False  # the candidate's process only: its values' plain content (a Counter as a dict, a numpy int as an int)


def _as_plain(value: Any) -> tuple[Any] | None:
    """The plain value a subclass of a plain type (or a numpy scalar) holds, read through the base
    type's own C methods, never the subclass's (a rigged `__eq__`, `__iter__` or `__index__` is not
    consulted): a namedtuple is compared as its tuple, a Counter as its dict, `I(int)` as its int."""
    for base, read in _PLAIN_BASES:
        if isinstance(value, base):
            return (read(value),)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic) and type(value).__module__ == "numpy":
        try:
            item = value.item()
        except Exception:
            return None
        return (item,) if type(item) in (*PLAIN_SCALARS, int, complex, bytes) else None
    return None


_PLAIN_BASES: tuple[tuple[type, Any], ...] = (
    (bool, bool),
    (int, int.__index__),
    (float, float.__float__),
    (complex, complex.__complex__),
    (str, str.__str__),
    (bytes, bytes.__bytes__),
    (list, lambda v: list(list.__iter__(v))),
    (tuple, lambda v: tuple(tuple.__iter__(v))),
    (dict, lambda v: dict(dict.items(v))),
    (frozenset, lambda v: frozenset(frozenset.__iter__(v))),
    (set, lambda v: set(set.__iter__(v))),
)


def decode(text: str | bytes, resolve: Any = None) -> Any:
    """The inverse of `encode`, from untrusted bytes: JSON only, tags checked, handles only when `resolve` is given."""

    def hook(obj: dict[str, Any]) -> Any:
        if len(obj) != 1:
            raise ValueError("malformed value")
        ((tag, body),) = obj.items()
        if tag == "t":
            return tuple(_list(body))
        if tag == "d":
            return {k: v for k, v in (_pair(p) for p in _list(body))}
        if tag == "s":
            return set(_list(body))
        if tag == "f":
            return frozenset(_list(body))
        if tag == "b" and isinstance(body, str):
            return body.encode("latin-1")
        if tag == "y" and isinstance(body, str):
            return bytearray(body.encode("latin-1"))
        if tag == "c" and len(_list(body)) == 2 and all(type(x) in (int, float) for x in body):
            return complex(body[0], body[1])
        if tag == "x" and isinstance(body, str) and len(body) < 1 << 20:
            return int(body, 16)
        if tag == "h" and resolve is not None and type(body) is int:
            return resolve(body)
        raise ValueError(f"unknown tag {tag!r}")

    return json.loads(text, object_hook=hook)


def _list(body: Any) -> list[Any]:
    if type(body) is not list:
        raise ValueError("malformed value")
    return body


def _pair(pair: Any) -> tuple[Any, Any]:
    if type(pair) is not list or len(pair) != 2:
        raise ValueError("malformed value")
    return pair[0], pair[1]


def send(fd: int, message: Any, deadline: float | None = None) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        if deadline is not None:  # a candidate that stops reading cannot block the driver past the deadline
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise TimeoutError("the solution did not take the request before the deadline")
        view = view[os.write(fd, view[: 1 << 16]) :]


def receive(fd: int, deadline: float | None = None) -> bytes | None:
    """One frame's bytes, or None at EOF. With a deadline (the driver), never blocks past it."""
    header = _read_exactly(fd, 4, deadline)
    if header is None:
        return None
    (size,) = struct.unpack(">I", header)
    if size > MAX_FRAME:
        raise ValueError(f"a {size}-byte reply is over the {MAX_FRAME}-byte limit")
    body = _read_exactly(fd, size, deadline)
    if body is None:
        raise EOFError("the reply was cut short")
    return body


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("the solution did not answer before the deadline")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            if got:
                raise EOFError("the reply was cut short")
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:300]


# ---------------------------------------------------------------- the candidate's process


def candidate(args: dict[str, Any]) -> None:
    """Exec the solution, then serve the driver until it hangs up."""
    global LOOSE
    LOOSE = True
    requests, replies = 4, 5
    namespace: dict[str, Any] = {"__name__": args.get("module_name") or "__solution__", "__builtins__": builtins}
    try:
        exec(compile(args["program"], "solution.py", "exec"), namespace)
    except BaseException as exc:  # SystemExit included: leaving early is a failure, not a pass
        send(replies, ["error", f"the solution raised {short(exc)} before the tests ran"])
        return
    send(replies, ["ready"])
    table: dict[int, Any] = {}

    def describe(value: Any) -> list[Any]:
        try:
            return ["v", encode(value)]
        except (NotPlain, RecursionError, ValueError):
            table[len(table) + 1] = value
            return ["o", len(table), type(value).__name__[:100], callable(value)]

    def resolve(handle: int) -> Any:
        return table[handle]

    while True:
        frame = receive(requests)
        if frame is None:
            return
        op, *rest = decode(frame, resolve)
        if op == "names":  # (protocol messages are lists: a JSON object is always a tagged value)
            answer: list[list[Any]] = []
            for name in rest[0]:
                if name not in namespace:
                    answer.append([name, ["missing"]])
                elif type(namespace[name]).__name__ == "module":
                    answer.append([name, ["m", namespace[name].__name__]])
                else:
                    answer.append([name, describe(namespace[name])])
            send(replies, ["ok", answer])
        elif op == "dir":
            send(replies, ["ok", sorted(n for n in namespace if not n.startswith("_"))])
        elif op == "getattr":
            try:
                send(replies, ["ok", describe(getattr(table[rest[0]], rest[1]))])
            except BaseException as exc:
                send(replies, _raised(exc))
        elif op in ("iter", "len"):  # a generator, map or dict view the tests iterate (`list(candidate(x))`) or measure
            try:
                obj = table[rest[0]]
                send(replies, ["ok", ["v", len(obj)] if op == "len" else ["v", [describe(v) for v in obj]]])
            except BaseException as exc:
                send(replies, _raised(exc))
        elif op == "call":
            target, call_args, call_kwargs = table[rest[0]], rest[1], dict(rest[2])
            sent = [encode(a) if type(a) in (list, dict, set, bytearray) else None for a in call_args]
            try:
                value = target(*call_args, **call_kwargs)
            except BaseException as exc:
                send(replies, _raised(exc))
                continue
            changed = []
            for i, before in enumerate(sent):  # in-place changes to list/dict/set arguments, as Python callers see them
                try:
                    after = encode(call_args[i]) if before is not None else before
                except (NotPlain, RecursionError, ValueError):
                    continue  # it now holds something that is not plain data: the caller keeps its own copy
                if after != before:
                    changed.append([i, after])
            send(replies, ["ok", describe(value), changed])


def _raised(exc: BaseException) -> list[Any]:
    try:
        message = str(exc)[:300]
    except BaseException:  # a __str__ that raises, too
        message = ""
    return ["raise", type(exc).__name__[:100], message]


# ---------------------------------------------------------------- the tests' process


class Link:
    """The driver's end of the pipes to the candidate."""

    def __init__(self, replies: int, requests: int, deadline: float):
        self.replies, self.requests, self.deadline = replies, requests, deadline
        self.gone: str | None = None
        self.asked = 0  # requests the tests made of the solution (a statement that made one involved it)

    def ask(self, message: list[Any]) -> list[Any]:
        self.asked += 1
        if self.gone:
            raise SolutionGone(self.gone)
        try:
            send(self.requests, message, self.deadline)
            frame = receive(self.replies, self.deadline)
            if frame is None:
                raise EOFError("the solution exited")
            reply = decode(frame)
            if type(reply) is not list or not reply or reply[0] not in ("ok", "raise", "error", "ready"):
                raise ValueError("the solution broke the protocol")
            return reply
        except (OSError, EOFError, ValueError, TypeError, RecursionError, MemoryError, struct.error) as exc:
            self.gone = "timed out" if isinstance(exc, TimeoutError) else f"{short(exc)}"
            raise SolutionGone(self.gone) from None

    def start(self) -> str | None:
        """Wait for the solution to load; why it did not, if it did not."""
        try:
            frame = receive(self.replies, self.deadline)
            reply = decode(frame) if frame is not None else None
        except (OSError, EOFError, ValueError, RecursionError, MemoryError) as exc:
            self.gone = "timed out" if isinstance(exc, TimeoutError) else short(exc)
            return f"the solution did not start: {self.gone}"
        if reply == ["ready"]:
            return None
        self.gone = "the solution did not start"
        if type(reply) is list and len(reply) == 2 and reply[0] == "error" and type(reply[1]) is str:
            return reply[1][:400]
        return "the solution exited before the tests ran" if reply is None else "the solution broke the protocol"

    def value(self, desc: Any) -> Any:
        if type(desc) is list and desc and desc[0] == "v" and len(desc) == 2:
            return desc[1]
        if type(desc) is list and len(desc) == 4 and desc[0] == "o" and type(desc[1]) is int and type(desc[2]) is str:
            return Remote(self, desc[1], desc[2], bool(desc[3]))
        self.gone = "the solution broke the protocol"
        raise SolutionGone(self.gone)

    def outcome(self, reply: list[Any]) -> Any:
        if reply[0] == "raise" and len(reply) == 3:
            name, message = str(reply[1]), str(reply[2])
            if name in RAISABLE:
                raise RAISABLE[name](message)
            if name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseExceptionGroup"):
                raise SolutionExit(f"{name}: {message}")
            raise SolutionError(f"{name}: {message}")
        if reply[0] != "ok" or len(reply) < 2:
            self.gone = "the solution broke the protocol"
            raise SolutionGone(self.gone)
        return self.value(reply[1])

    def names(self, names: list[str]) -> dict[str, Any]:
        reply = self.ask(["names", names])
        if (
            reply[0] != "ok"
            or type(reply[1]) is not list
            or not all(type(p) is list and len(p) == 2 and type(p[0]) is str for p in reply[1])
        ):
            self.gone = "the solution broke the protocol"
            raise SolutionGone(self.gone)
        return {name: desc for name, desc in reply[1] if name in names}

    def call(self, handle: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        handles = {id(a): a._halo_handle for a in (*args, *kwargs.values()) if type(a) is Remote and a._halo_link is self}
        try:
            message = ["call", handle, [encode(a, handles) for a in args], [[str(k), encode(v, handles)] for k, v in kwargs.items()]]
        except (NotPlain, RecursionError) as exc:
            raise TypeError(f"cannot pass this to the solution ({exc}): only plain data crosses the sandbox") from None
        reply = self.ask(message)
        value = self.outcome(reply)
        changed = reply[2] if len(reply) > 2 and type(reply[2]) is list else []
        for pair in changed:  # reflect in-place changes to the caller's list/dict/set arguments
            i, new = _pair(pair)
            if type(i) is int and 0 <= i < len(args) and type(args[i]) is type(new) and type(new) in (list, set, dict, bytearray):
                original = args[i]
                if type(new) in (list, bytearray):
                    original[:] = new
                else:
                    original.clear()
                    original.update(new)
        return value


class Remote:
    """A function or object that lives in the solution's process."""

    __slots__ = ("_halo_link", "_halo_handle", "_halo_type", "_halo_callable")

    def __init__(self, link: Link, handle: int, type_name: str, is_callable: bool):
        object.__setattr__(self, "_halo_link", link)
        object.__setattr__(self, "_halo_handle", handle)
        object.__setattr__(self, "_halo_type", type_name)
        object.__setattr__(self, "_halo_callable", is_callable)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._halo_link.call(self._halo_handle, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._halo_link.outcome(self._halo_link.ask(["getattr", self._halo_handle, name]))

    def __iter__(self) -> Any:
        """Iterating an object of the solution's (a generator, a map, a dict view): its items, each as any value."""
        items = self._halo_link.outcome(self._halo_link.ask(["iter", self._halo_handle]))
        if type(items) is not list:
            raise SolutionGone("the solution broke the protocol")
        return iter([self._halo_link.value(d) for d in items])

    def __len__(self) -> int:
        size = self._halo_link.outcome(self._halo_link.ask(["len", self._halo_handle]))
        if type(size) is not int or size < 0:
            raise SolutionGone("the solution broke the protocol")
        return size

    def __bool__(self) -> bool:
        if self._halo_callable and self._halo_type in ("function", "type", "builtin_function_or_method", "method"):
            return True
        raise TypeError(f"a {self._halo_type} object from the solution has no truth value in the tests: return plain data")

    def __repr__(self) -> str:
        return f"<{self._halo_type} from the solution>"


class Units:
    """Counts what the tests check, from their execution (never from the names in a statement).

    The test code arrives instrumented: each *unit statement* (a top-level statement of the tests, or
    of `check()`'s body) reports begin/raised/end, and each `assert` on something other than a
    constant reports that it ran. A statement is a unit when an assertion ran in it or an exception
    escaped it; it passes when nothing escaped. A statement that only involved the solution (`out =
    candidate(x)`) belongs to the next unit; if no unit follows, those statements are one more unit.
    A statement during which the solution went away fails, even if the test swallowed that.
    """

    def __init__(self, link: Link):
        self.link = link
        self.results: list[tuple[bool, int, str | None]] = []
        self.checks = 0
        self.pending: int | None = None  # the first statement of an open unit that involved the solution
        self.deadline_hit = False
        self._start: tuple[int, int] = (0, 0)
        self._exc: BaseException | None = None

    def check(self) -> None:
        self.checks += 1

    def begin(self, k: int) -> None:
        if self.deadline_hit:
            raise DeadlinePassed("the tests ran past their deadline")
        self._start, self._exc = (self.checks, self.link.asked), None

    def raised(self, k: int, exc: BaseException) -> None:
        if isinstance(exc, DeadlinePassed) or self.deadline_hit:
            raise exc
        self._exc = exc

    def end(self, k: int) -> None:
        checks, asked = self._start
        exc = self._exc
        involved = self.link.asked > asked
        if exc is None and involved and self.link.gone:
            exc = SolutionGone(self.link.gone)  # the test swallowed it; in one process it would have ended the tests
        first = self.pending if self.pending is not None else k
        if exc is not None:
            self.results.append((False, k, _why(exc)))  # reported at the statement that failed
            self.pending = None
        elif self.checks > checks:
            self.results.append((True, first, None))
            self.pending = None
        elif involved and self.pending is None:
            self.pending = k

    def finish(self) -> None:
        if self.pending is not None:
            self.results.append((True, self.pending, None))
            self.pending = None


def _why(exc: BaseException) -> str:
    return f"the solution stopped answering: {exc}" if isinstance(exc, SolutionGone) else short(exc)


def driver(args: dict[str, Any]) -> None:
    """Run the tests against proxies of the solution; write the record on fd 3.

    Names: the tests' own code, the task's prompt (executed here: however it binds a name, that is
    the task's binding), the standard-library modules the tests name without importing them, and
    builtins. From the solution: only the entry points the task declares (`declared`), and, for tests
    that call functions by name without declaring them, those names when nothing above binds them.
    """
    record_fd = 3
    deadline = time.monotonic() + float(args["deadline_s"])

    def emit(record: dict[str, Any]) -> None:
        os.write(record_fd, (json.dumps(record) + "\n").encode())

    os.set_blocking(5, False)
    link = Link(4, 5, deadline)
    units = Units(link)

    def deadline_passed(*_: Any) -> None:
        units.deadline_hit = True
        raise DeadlinePassed("the tests ran past their deadline")

    signal.signal(signal.SIGALRM, deadline_passed)
    if why := link.start():
        emit({"passed": 0, "total": 0, "error": why})
        return
    namespace: dict[str, Any] = {"__name__": "__tests__", "__builtins__": builtins}
    if args.get("helpers"):  # the prompt is task data: its bindings are the tests', not the solution's
        with contextlib.suppress(Exception):
            exec(_code(args["helpers"]), namespace)
    for name in args.get("stdlib", []):  # `math` named by the tests: the real module, never the solution's
        if name not in namespace and name in sys.stdlib_module_names:
            with contextlib.suppress(Exception):
                namespace[name] = importlib.import_module(name)
    declared = [str(n) for n in args.get("declared", [])]
    wanted = declared + [str(n) for n in args.get("inferred", []) if n not in namespace and n not in declared]
    try:
        found = link.names(wanted) if wanted else {}
    except SolutionGone as exc:
        emit({"passed": 0, "total": 0, "error": f"the solution stopped answering: {exc}"})
        return
    for name in wanted:
        desc = found.get(name)
        if type(desc) is list and desc[:1] in (["v"], ["o"]):
            namespace[name] = link.value(desc)
        elif name in declared:
            namespace.pop(name, None)  # the prompt's stub is not the solution
    entry = args.get("entry_point")
    target = namespace.get(entry) if entry else None
    if args.get("check_function") and target is None:
        emit({"passed": 0, "total": 0, "error": f"the solution does not define `{entry}`"})
        return
    namespace.update(__halo_check=units.check, __halo_begin=units.begin, __halo_raised=units.raised, __halo_end=units.end)
    try:
        exec(_code(args["test_code"]), namespace)
        if args.get("check_function"):
            namespace[args["check_function"]](target)
    except DeadlinePassed:
        raise TimeoutError("the tests ran past their deadline") from None
    except BaseException as exc:
        if isinstance(exc, SolutionGone | SolutionExit):
            units.results.append((False, -1, _why(exc)))
        else:
            emit({"passed": 0, "total": 0, "error": f"the tests could not run: {short(exc)}"})
            return
    units.finish()
    failures = [{"test": k, "error": why or "failed"} for ok, k, why in units.results if not ok]
    emit({"passed": len(units.results) - len(failures), "total": len(units.results), "failures": failures[:10]})


def _code(packed: str) -> Any:
    """Code the pipeline compiled (task data, never the solution's bytes)."""
    return marshal.loads(base64.b64decode(packed))


def script(args: dict[str, Any]) -> None:
    """`execution` with language python: the program as __main__, stdin/stdout being the test case's."""
    sys.argv = ["main.py"]
    exec(compile(args["program"], "main.py", "exec"), {"__name__": "__main__", "__file__": "main.py", "__builtins__": builtins})
