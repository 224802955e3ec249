"""The two programs of a native sample with `test` statements, as source text (nothing is compiled here).

- The **solution's program** (the candidate's): the solution's own text, unchanged and first in its
  translation unit / crate (its `main` renamed), then a dispatcher that reads requests, calls the
  entry point and writes the reply. Whatever the solution defines — macros, `static` copies of
  library functions, operators in `namespace std`, constructors, crate attributes, trait impls —
  lives in this program only. It may lie about its return values, nothing else.
- The **tests' program** (the driver's): the task's tests in their own translation unit / crate,
  compiled against the standard headers, the prompt's own code before its first entry point and
  declarations of the entry points (canonical types of the grammar, literal default arguments only), linked with stubs that
  send each call to the solution's process and decode its reply. It counts its check sites itself
  and reports each site's first pass and first failure on a pipe the solution cannot reach.

`native.py` reads the sample; `native_wire.py` is the protocol both programs share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from halo_pipeline.verifiers import native, native_wire
from halo_pipeline.verifiers.native import Param, Refused, Signature

C_PRELUDE = ["stdio.h", "stdlib.h", "string.h", "math.h", "stdbool.h", "stdint.h", "limits.h", "ctype.h", "stddef.h", "float.h"]
CPP_PRELUDE = [
    "cstdio", "cstdlib", "cstring", "cmath", "cstdint", "climits", "cfloat", "cctype", "cstddef", "string", "vector", "map", "set",
    "unordered_map", "unordered_set", "utility", "tuple", "optional", "array", "algorithm", "numeric", "stdexcept", "limits",
]  # fmt: skip
# a system header's name: relative, no `..` (an angle-bracket include of `/dev/zero` or `../x` never reaches a compiler)
STANDARD_HEADER = re.compile(r"(?!.*\.\.)[A-Za-z_][A-Za-z0-9_+]*(?:/[A-Za-z_][A-Za-z0-9_+]*)*(?:\.h|\.hpp)?")


def _includes(language: str, test: str, prompt_includes: tuple[str, ...]) -> list[str]:
    """The standard headers the tests' unit includes: the prelude, the prompt's, and the tests' own."""
    own = re.findall(r"^\s*#\s*include\s*<([^>\n]+)>", test, re.MULTILINE)
    found = [*(CPP_PRELUDE if language == "cpp" else C_PRELUDE), *prompt_includes, *own]
    return list(dict.fromkeys(h for h in found if STANDARD_HEADER.fullmatch(h)))


@dataclass(frozen=True)
class Plan:
    """What each side of the pair gets: only the solution's program goes to the candidate."""

    candidate: dict[str, Any]  # files + build commands of the solution's program
    driver: dict[str, Any]  # files + build commands of the tests' program, the number of sites and their text
    sources: tuple[str, ...]  # each check site's text (for failure details)


def plan(language: str, compiler: str, flags: list[str], solution: str, prompt: str, test: str, entry: object) -> Plan:
    """The two programs of a sample with `test` statements, or Refused."""
    sites = native.number_checks(language, test)
    if not sites.sources:
        raise Refused("the tests hold no check (CHECK(cond) in C/C++, check!(cond) in Rust)")
    declared = native.declared_entry_points(entry)
    prompt_includes = tuple(native.scan_c(prompt).includes) if language != "rust" and prompt.strip() else ()
    if language == "rust":
        library = native.RUST_PRELUDE_FUNCTIONS
    elif language == "c":
        library = native.c_library_names(compiler)
    else:
        library = native.cpp_library_names(compiler, "".join(f"#include <{h}>\n" for h in _includes(language, test, prompt_includes)))
    if not library and declared is None and language != "rust":
        raise Refused("the C library's names cannot be listed here (nm from binutils): name the function under test in entry_point")
    entries = native.entry_points(language, solution, prompt, test, declared, library)
    program = _program(language, solution, prompt, entries)
    if language == "rust":
        candidate, driver = _rust(compiler, flags, program, sites.text, entries, len(sites.sources))
    else:
        candidate, driver = _c_family(language, compiler, flags, program, sites.text, entries, len(sites.sources))
    return Plan(candidate, driver, sites.sources)


def wire_build(language: str, compiler: str, flags: list[str]) -> tuple[dict[str, str], list[list[str]], str]:
    """How to build the wire's code once per compiler and flags: (files, build commands, what is built)."""
    if language == "rust":
        files = {"halo_wire.rs": native_wire.WIRE_RS_CRATE}
        return (
            files,
            [[compiler, "--edition", "2021", *flags, "--crate-type", "rlib", "--crate-name", "halo_wire", "-o", RLIB, "halo_wire.rs"]],
            RLIB,
        )
    ext = "cc" if language == "cpp" else "c"
    files = {"halo_wire.h": native_wire.WIRE_H, f"halo_wire.{ext}": native_wire.WIRE_C}
    return files, [[compiler, *flags, "-c", f"halo_wire.{ext}", "-o", "halo_wire.o"]], "halo_wire.o"


def with_wire(side: dict[str, Any], language: str, built: str) -> dict[str, Any]:
    """A program's arguments with the wire prebuilt (`built`: base64 of wire_build's output) instead of compiled in."""
    name = RLIB if language == "rust" else "halo_wire.o"
    side = {**side, "binary_files": {**side.get("binary_files", {}), name: built}}
    if language == "rust":
        side["files"] = {k: v.replace(native_wire.WIRE_RS, "\nextern crate halo_wire;\n") for k, v in side["files"].items()}
        extern = ["-L", ".", "--extern", f"halo_wire={RLIB}"]
        side["build"] = [[*argv[:-3], *extern, *argv[-3:]] for argv in side["build"]]  # before `-o out main.rs`
        return side
    source = "halo_wire.cc" if language == "cpp" else "halo_wire.c"
    side["files"] = {k: v for k, v in side["files"].items() if k != source}
    side["build"] = [[name if a == source else a for a in argv] for argv in side["build"]]
    return side


RLIB = "libhalo_wire.rlib"


def _program(language: str, solution: str, prompt: str, entries: native.Entries) -> str:
    """The solution's text: the completion, or the prompt + completion when the completion continues
    a prompt that declares an entry point it does not define itself (HumanEval-X style)."""
    scanner = native.scan_rust if language == "rust" else native.scan_c
    defined = scanner(solution).functions
    if prompt.strip() and any(s.name not in defined for s in entries.signatures):
        return prompt + solution
    return solution


# ---------------------------------------------------------------- C and C++


Programs = tuple[dict[str, Any], dict[str, Any]]  # (the candidate's arguments, the driver's)


def _c_family(language: str, compiler: str, flags: list[str], program: str, test: str, entries: native.Entries, n_sites: int) -> Programs:
    cpp = language == "cpp"
    ext = "cc" if cpp else "c"
    needs = _cpp_needs(entries.signatures) if cpp else set()
    head = "".join(f"#define HALO_NEED_{n}\n" for n in sorted(needs)) + (
        '#include "halo_wire.hpp"\n' if cpp else '#include "halo_wire.h"\n'
    )
    wire = {"halo_wire.h": native_wire.WIRE_H, f"halo_wire.{ext}": native_wire.WIRE_C}
    if cpp:
        wire["halo_wire.hpp"] = native_wire.WIRE_HPP
    names = {s.name: (f"halo_entry_{s.name}" if s.name in entries.library else s.name) for s in entries.signatures}
    # the solution's program: its text first in its own unit, then the dispatcher
    bounds = _bounds(entries.signatures, cpp)
    dispatch = _c_dispatch(entries.signatures, cpp)
    server = (
        head
        + "#include <limits.h>\n#include <stdint.h>\n#include <stddef.h>\n"
        + bounds
        + "#define main halo_solution_main\n"
        + f'#include "solution.{ext}"\n#undef main\n'
        + _undefs(dispatch, {s.name for s in entries.signatures})
        + dispatch
    )
    candidate = {
        "files": {f"solution.{ext}": program, f"server.{ext}": server, **wire},
        "build": [[compiler, *flags, f"server.{ext}", f"halo_wire.{ext}", "-o", "server", "-lm"]],
        "binary": "server",
    }
    # the tests' program: the tests against declarations only, the stubs and the reporting in another unit
    includes = _includes(language, test, entries.includes)
    body = "\n".join(line for line in test.splitlines() if not re.match(r"\s*#\s*include\b", line))
    decls = "".join(f"#define {name} {alias}\n" for name, alias in names.items() if name != alias)
    decls += "".join(f"{sig.declaration(language)};\n" for sig in entries.signatures)
    if cpp:
        check = (
            "#define HALO_CHECK(k, ...) do { bool halo_ok_ = false; try { halo_ok_ = static_cast<bool>(__VA_ARGS__); } "
            "catch (...) {} halo_site((k), halo_ok_); } while (0)\n"
        )
    else:
        check = "#define HALO_CHECK(k, ...) halo_site((k), !!(__VA_ARGS__))\n"
    tests = (
        "".join(f"#include <{h}>\n" for h in includes)
        + (f'#line 1 "prompt"\n{entries.prompt_head}\n' if entries.prompt_head else "")
        + decls
        + ('extern "C" ' if cpp else "")
        + "void halo_site(int site, int ok);\n"
        + check
        + f'void halo_tests(void) {{\n#line 1 "test"\n{body}\n}}\n'
    )
    tests_head = (
        "".join(f"#define HALO_NEED_{n}\n" for n in sorted(needs | {"string"})) + '#define HALO_TESTS_SIDE\n#include "halo_wire.hpp"\n'
    )
    stubs = (
        f'#include "halo_wire.{ext}"\n'
        + native_wire.WIRE_CALL_C
        + (tests_head if cpp else head)
        + _c_stubs(entries.signatures, names, cpp, n_sites)
    )
    strict = [] if cpp else ["-Werror=implicit-function-declaration"]
    driver = {
        "files": {f"tests.{ext}": tests, f"stubs.{ext}": stubs, **wire},
        "build": [[compiler, *flags, *strict, f"tests.{ext}", f"stubs.{ext}", "-s", "-o", "tests", "-lm"]],
        "binary": "tests",
        "sites": n_sites,
    }
    return candidate, driver


def _cpp_needs(signatures: tuple[Signature, ...]) -> set[str]:
    """The std headers the entry points' types need: all the solution's unit gets beyond its own."""
    spelled = " ".join(p.spelling for s in signatures for p in (*s.params, *([s.ret] if s.ret else [])))
    return {name for name in native.CPP_HEADERS if re.search(rf"\bstd::{name}\b", spelled)}


def _undefs(code: str, keep: set[str]) -> str:
    """Every identifier the dispatcher spells, undefined: no macro of the solution rewrites it."""
    names = sorted({t.text for t in native.c_tokens(code) if t.kind == "id"} - keep)
    return "".join(f"#undef {n}\n" for n in names)


def _bounds(signatures: tuple[Signature, ...], cpp: bool) -> str:
    """C scalars' ranges, captured before the solution's text (which could redefine INT_MAX)."""
    seen: dict[str, native.Scalar] = {}
    for sig in signatures:
        for p in (*sig.params, *([sig.ret] if sig.ret else [])):
            if p.scalar is not None and p.scalar.kind in ("int", "uint") and (not cpp or p.form != "value"):
                seen.setdefault(p.scalar.spelling, p.scalar)
    out = []
    for s in seen.values():
        key = _key(s.spelling)
        out.append(f"static const long long halo_lo_{key} = (long long)({s.lo});\n")
        out.append(f"static const unsigned long long halo_hi_{key} = (unsigned long long)({s.hi});\n")
    return "".join(out)


def _key(spelling: str) -> str:
    return re.sub(r"\W+", "_", spelling)


def _c_value_type(p: Param, cpp: bool) -> str:
    """The type a decoded value is held in (C: `_Bool`, never the `bool` macro of stdbool.h)."""
    if p.scalar is not None and p.scalar.kind == "bool" and not cpp:
        return "_Bool"
    return p.scalar.spelling if p.scalar is not None else p.spelling


def _put_scalar(s: native.Scalar, expr: str, out: str) -> str:
    if s.kind == "int":
        return f"halo_put_i64({out}, (long long)({expr}));"
    if s.kind == "uint":
        return f"halo_put_u64({out}, (unsigned long long)({expr}));"
    if s.kind == "bool":
        return f"halo_put_u8({out}, ({expr}) ? 1u : 0u);"
    return f"halo_put_f64({out}, (double)({expr}));"


def _get_scalar(s: native.Scalar, target: str, src: str, cpp: bool, server: bool) -> str:
    """Decode into `target` (an lvalue of the scalar's type); ranges from the captured bounds (server) or limits.h."""
    ctype = "_Bool" if s.kind == "bool" and not cpp else s.spelling
    if s.kind == "int":
        lo, hi = (f"halo_lo_{_key(s.spelling)}", f"(long long)halo_hi_{_key(s.spelling)}") if server else (s.lo, s.hi)
        return f"{{ long long v_ = 0; halo_get_i64({src}, &v_, {lo}, {hi}); {target} = ({ctype})v_; }}"
    if s.kind == "uint":
        hi = f"halo_hi_{_key(s.spelling)}" if server else f"(unsigned long long)({s.hi})"
        return f"{{ unsigned long long v_ = 0; halo_get_u64({src}, &v_, {hi}); {target} = ({ctype})v_; }}"
    if s.kind == "bool":
        return f"{{ int v_ = 0; halo_get_bool({src}, &v_); {target} = v_ != 0; }}"
    return f"{{ double v_ = 0; halo_get_f64({src}, &v_); {target} = ({ctype})v_; }}"


def _c_dispatch(signatures: tuple[Signature, ...], cpp: bool) -> str:
    """The solution's side: decode each request, call, reply (C++: the solution's exceptions too)."""
    cases = []
    for fid, sig in enumerate(signatures):
        lines: list[str] = []
        args: list[str] = []
        after: list[str] = []  # what comes back after the return value: in-out arguments
        for i, p in enumerate(sig.params):
            a = f"a{i}"
            if p.form == "value" and cpp:
                lines.append(f"{p.spelling} {a}{{}}; halo_wire::take(&in, {a});")
                args.append(f"std::move({a})" if p.ref in ("", "&&") else a)
                if p.mode == "inout":
                    after.append(f"halo_wire::put(&out, {a});")
            elif p.form == "value":
                assert p.scalar is not None
                lines.append(f"{_c_value_type(p, cpp)} {a} = 0; " + _get_scalar(p.scalar, a, "&in", cpp, True))
                args.append(a)
            elif p.form == "cstr":
                lines.append(f"int z{i} = 0; char *{a} = halo_get_str(&in, &z{i});")
                args.append(a)
                if p.mode == "inout":
                    after.append(f"halo_put_str(&out, {a});")
            elif p.form == "array":
                assert p.scalar is not None
                t = _c_value_type(p, cpp)
                lines.append(
                    f"unsigned long k{i} = 0; {t} *{a} = 0; if (halo_get_count(&in, &k{i}, 8) == 1) {{ "
                    f"{a} = ({t} *)halo_alloc(k{i} * sizeof({t})); for (unsigned long j = 0; j < k{i}; j++) "
                    + _get_scalar(p.scalar, f"{a}[j]", "&in", cpp, True)
                    + " }"
                )
                args.append(a)
                if p.mode == "inout":
                    after.append(
                        f"if (!{a}) halo_put_u32(&out, 0xFFFFFFFFul); else {{ halo_put_u32(&out, k{i}); "
                        f"for (unsigned long j = 0; j < k{i}; j++) {_put_scalar(p.scalar, f'{a}[j]', '&out')} }}"
                    )
            elif p.form == "ptr":
                assert p.scalar is not None
                t = _c_value_type(p, cpp)
                if p.mode == "out":
                    lines.append(f"{t} v{i} = 0; {t} *{a} = &v{i};")
                else:
                    lines.append(
                        f"unsigned h{i} = 0; {t} v{i} = 0; {t} *{a} = 0; halo_get_u8(&in, &h{i}); "
                        f"if (h{i}) {{ {_get_scalar(p.scalar, f'v{i}', '&in', cpp, True)} {a} = &v{i}; }}"
                    )
                args.append(a)
                if p.mode == "out":
                    after.append(_put_scalar(p.scalar, f"v{i}", "&out"))
                elif p.mode == "inout":
                    after.append(f"halo_put_u8(&out, {a} != 0); if ({a}) {{ {_put_scalar(p.scalar, f'*{a}', '&out')} }}")
        call = f"({sig.name})({', '.join(args)})"  # the function: a function-like macro of that name is not called
        lines.append("if (!halo_done(&in)) return 1;")
        reply = ["halo_out_init(&out); halo_put_u8(&out, 0);"]
        ret = sig.ret
        if ret is None:
            body = [f"{call};", *reply]
        elif ret.form == "value" and cpp:
            body = [f"{ret.spelling} r = {call};", *reply, "halo_wire::put(&out, r);"]
        elif ret.form == "value":
            assert ret.scalar is not None
            body = [f"{_c_value_type(ret, cpp)} r = {call};", *reply, _put_scalar(ret.scalar, "r", "&out")]
        elif ret.form == "cstr":
            body = [f"const char *r = {call};", *reply, "halo_put_str(&out, r);"]
        else:  # an array whose length the solution set in returnSize
            assert ret.scalar is not None
            size = next(f"v{i}" for i, p in enumerate(sig.params) if p.extra == "returnSize")
            body = [
                f"{_c_value_type(ret, cpp)} *r = {call};",
                *reply,
                f"if (!r) halo_put_u32(&out, 0xFFFFFFFFul); else {{ unsigned long n = {size} < 0 ? 0ul : (unsigned long){size}; "
                f"halo_put_u32(&out, n); for (unsigned long j = 0; j < n; j++) {_put_scalar(ret.scalar, 'r[j]', '&out')} }}",
            ]
        body += after
        if cpp:
            body = (
                ["try {"]
                + ["    " + b for b in body]
                + [
                    "} catch (const std::exception &e) { halo_wire::raise_reply(&out, halo_wire::code_of(e), e.what()); }",
                    'catch (...) { halo_wire::raise_reply(&out, 0, ""); }',
                ]
            )
        body.append("if (!halo_send(5, &out)) return 0;")
        cases.append(f"    case {fid}: {{\n" + "".join(f"        {x}\n" for x in lines + body) + "        break;\n    }\n")
    return (
        "int main(void) {\n"
        "    for (;;) {\n"
        "        halo_in in;\n"
        "        halo_out out;\n"
        "        unsigned long id = 0;\n"
        "        if (!halo_recv(4, &in)) return 0;\n"
        "        halo_get_u32(&in, &id);\n"
        "        switch (id) {\n" + "".join(cases) + "        default: return 1;\n        }\n    }\n}\n"
    )


C_MAIN = """
static int halo_events = -1;
static unsigned char halo_state[@SITES@];
static void halo_event(char kind, int k) {
    unsigned char b[5];
    b[0] = (unsigned char)kind;
    for (int i = 0; i < 4; i++) b[1 + i] = (unsigned char)((unsigned)k >> (8 * i));
    if (write(halo_events, b, 5) != 5) _exit(3);
}
@EXTERN@void halo_site(int k, int ok) {
    ok = ok && !halo_fault;
    halo_fault = 0;
    if (k < 0 || k >= @SITES@) return;
    if (ok && halo_state[k] == 0) { halo_state[k] = 1; halo_event('P', k); }
    else if (!ok && halo_state[k] != 2) { halo_state[k] = 2; halo_event('F', k); }
}
void halo_tests(void);
int main(int argc, char **argv) {
    halo_out go;
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); /* no process of the solution's uid may read or trace us */
    signal(SIGPIPE, SIG_IGN);
    if (argc != 4) return 2;
    unlink(argv[0]); /* nothing of the tests stays on disk once the solution runs */
    halo_req_fd = atoi(argv[1]);
    halo_rep_fd = atoi(argv[2]);
    halo_events = atoi(argv[3]);
    halo_out_init(&go);
    halo_put_raw(&go, "go", 2); /* the candidate execs the solution only now */
    if (!halo_send(halo_req_fd, &go)) halo_fail();
@RUN_TESTS@
    halo_event('E', 0);
    _exit(0);
}
"""


def _c_stubs(signatures: tuple[Signature, ...], names: dict[str, str], cpp: bool, n_sites: int) -> str:
    """The tests' side: each entry point as a stub that calls the solution; the site reports; main."""
    out = [
        "#include <limits.h>\n#include <stdint.h>\n#include <stddef.h>\n#include <stdlib.h>\n#include <string.h>\n"
        "#include <unistd.h>\n#include <signal.h>\n#include <sys/prctl.h>\n" + ("" if cpp else "#include <stdbool.h>\n"),
    ]
    for fid, sig in enumerate(signatures):
        out.append(_c_stub(fid, sig, names[sig.name], cpp))
    run_tests = "    try { halo_tests(); } catch (...) {}" if cpp else "    halo_tests();"
    out.append(C_MAIN.replace("@SITES@", str(n_sites)).replace("@EXTERN@", 'extern "C" ' if cpp else "").replace("@RUN_TESTS@", run_tests))
    return "".join(out)


def _c_stub(fid: int, sig: Signature, name: str, cpp: bool) -> str:
    ret = sig.ret
    decl = Signature(sig.name, sig.params, ret).declaration("cpp" if cpp else "c", name)
    if cpp:
        fail = "throw halo_wire::fault();"
    elif ret is None:
        fail = "return;"
    else:
        fail = "return halo_r;"
    lines = ["halo_out q;", "halo_in r;", "int st = 0;"]
    if ret is not None:
        rtype = "char *" if ret.form == "cstr" else (f"{_c_value_type(ret, cpp)} *" if ret.form == "array_ret" else _c_value_type(ret, cpp))
        lines.append(f"{rtype} halo_r{{}};" if cpp else f"{rtype} halo_r = 0;")
    lines.append(f"if (!halo_call_begin(&q, {fid})) {fail}")
    back: list[str] = []  # decoding what comes back
    assign: list[str] = []  # writing it into the tests' variables, once the whole reply checked out
    for i, p in enumerate(sig.params):
        a = f"a{i}"
        s = p.scalar
        if p.form == "value" and cpp:
            lines.append(f"halo_wire::put(&q, {a});")
            if p.mode == "inout":
                back.append(f"{p.spelling} n{i}{{}}; halo_wire::take(&r, n{i});")
                assign.append(f"{a} = std::move(n{i});")
        elif p.form == "value":
            assert s is not None
            lines.append(_put_scalar(s, a, "&q"))
        elif p.form == "cstr":
            lines.append(f"halo_put_str(&q, {a});")
            if p.mode == "inout":
                lines.append(f"unsigned long c{i} = {a} ? (unsigned long)strlen({a}) + 1 : 0;")
                back.append(f"int z{i} = 0; char *n{i} = halo_get_str(&r, &z{i});")
                assign.append(
                    f"if ({a} && n{i}) {{ unsigned long m = (unsigned long)strlen(n{i}) + 1; "
                    f"if (m > c{i}) {{ free(n{i}); halo_fail(); {fail} }} memcpy({a}, n{i}, m); }} free(n{i});"
                )
        elif p.form == "array":
            assert s is not None
            n = f"a{i + 1}"
            lines.append(
                f"unsigned long k{i} = halo_len((long long)({n})); if (!{a}) halo_put_u32(&q, 0xFFFFFFFFul); "
                f"else {{ halo_put_u32(&q, k{i}); for (unsigned long j = 0; j < k{i}; j++) {_put_scalar(s, f'{a}[j]', '&q')} }}"
            )
            if p.mode == "inout":
                t = _c_value_type(p, cpp)
                back.append(
                    f"unsigned long m{i} = 0; int w{i} = halo_get_count(&r, &m{i}, 8); {t} *n{i} = 0; "
                    f"if ({a} ? (w{i} != 1 || m{i} != k{i}) : w{i} != 2) r.bad = 1; "
                    f"else if ({a}) {{ n{i} = ({t} *)halo_alloc(k{i} * sizeof({t})); "
                    f"for (unsigned long j = 0; j < k{i}; j++) {_get_scalar(s, f'n{i}[j]', '&r', cpp, False)} }}"
                )
                assign.append(f"if ({a} && n{i}) memcpy({a}, n{i}, k{i} * sizeof({t})); free(n{i});")
        elif p.form == "ptr":
            assert s is not None
            t = _c_value_type(p, cpp)
            if p.mode != "out":
                lines.append(f"halo_put_u8(&q, {a} != 0); if ({a}) {{ {_put_scalar(s, f'*{a}', '&q')} }}")
            if p.mode == "out":
                back.append(f"{t} n{i} = 0; {_get_scalar(s, f'n{i}', '&r', cpp, False)}")
                assign.append(f"if ({a}) *{a} = n{i};")
            elif p.mode == "inout":
                back.append(
                    f"unsigned h{i} = 0; {t} n{i} = 0; halo_get_u8(&r, &h{i}); if (h{i} != ({a} != 0)) r.bad = 1; "
                    f"else if (h{i}) {{ {_get_scalar(s, f'n{i}', '&r', cpp, False)} }}"
                )
                assign.append(f"if ({a}) *{a} = n{i};")
    lines.append(f"if (!halo_call_end(&q, &r, &st)) {fail}")
    if cpp:
        lines.append("if (st == 1) halo_wire::rethrow(&r);")
    else:
        lines.append(f"if (st != 0) {{ halo_in_free(&r); halo_fail(); {fail} }}")
    if ret is not None:
        if ret.form == "value" and cpp:
            lines.append("halo_wire::take(&r, halo_r);")
        elif ret.form == "value":
            assert ret.scalar is not None
            lines.append(_get_scalar(ret.scalar, "halo_r", "&r", cpp, False))
        elif ret.form == "cstr":
            lines.append("{ int z = 0; halo_r = halo_get_str(&r, &z); if (!halo_r && !z) r.bad = 1; }")
        else:
            assert ret.scalar is not None
            t = _c_value_type(ret, cpp)
            size = next(i for i, p in enumerate(sig.params) if p.extra == "returnSize")
            lines.append(
                f"unsigned long rk = 0; int rw = halo_get_count(&r, &rk, 8); "
                f"if (rw == 1) {{ halo_r = ({t} *)halo_alloc(rk * sizeof({t})); "
                f"for (unsigned long j = 0; j < rk; j++) {_get_scalar(ret.scalar, 'halo_r[j]', '&r', cpp, False)} }} "
                "else if (rw != 2) r.bad = 1;"
            )
            assign.append(f"if (halo_r && (long long)rk != (long long)n{size}) {{ halo_fail(); {fail} }}")
    lines += back
    lines.append(f"if (!halo_finish(&r)) {fail}")
    lines += assign
    if ret is not None:
        lines.append("return halo_r;")
    return f"{decl} {{\n" + "".join(f"    {x}\n" for x in lines) + "}\n"


# ---------------------------------------------------------------- Rust


RUST_TESTS_HEAD = """#![allow(unused, dead_code, non_snake_case, unused_imports, unused_macros, unused_mut, unused_variables)]
"""


def _rust(compiler: str, flags: list[str], program: str, test: str, entries: native.Entries, n_sites: int) -> Programs:
    # the solution in a module of its own: its inner attributes (`forbid(unsafe_code)`, lints) are that
    # module's; its entry points made `pub` so that the dispatcher at the crate root may call them
    visibility = native.scan_rust(program).visibility
    for start, end in sorted((visibility[s.name] for s in entries.signatures if s.name in visibility), reverse=True):
        program = program[:start] + "pub " + program[end:]
    server = (
        "#![allow(unused, dead_code)]\n#[allow(unused, dead_code)]\nmod solution {\n"
        + program
        + "\n}\n"
        + native_wire.WIRE_RS
        + _rust_dispatch(entries.signatures)
        + "fn main() { halo_server::serve() }\n"
    )
    candidate = {
        "files": {"main.rs": server},
        "build": [[compiler, "--edition", "2021", *flags, "--cap-lints", "warn", "-o", "server", "main.rs"]],
        "binary": "server",
    }
    tests = RUST_TESTS_HEAD + entries.prompt_head + "\n" + native_wire.WIRE_RS + _rust_stubs(entries.signatures, n_sites)
    tests += f"fn halo_tests() {{\n{test}\n}}\n"
    driver = {
        "files": {"tests.rs": tests},
        "build": [[compiler, "--edition", "2021", *flags, "--cap-lints", "allow", "-C", "strip=symbols", "-o", "tests", "tests.rs"]],
        "binary": "tests",
        "sites": n_sites,
    }
    return candidate, driver


def _rust_arg(p: Param, a: str) -> str:
    if p.ref == "&mut":
        return f"&mut {a}[..]" if p.extra == "slice" else f"&mut {a}"
    return f"&{a}" if p.ref == "&" else a


def _rust_dispatch(signatures: tuple[Signature, ...]) -> str:
    cases = []
    for fid, sig in enumerate(signatures):
        lines = [f"let mut a{i}: {p.spelling} = match r.get() {{ Some(v) => v, None => return }};" for i, p in enumerate(sig.params)]
        lines.append("if !r.done() { return; }")
        call = f"crate::solution::{sig.name}({', '.join(_rust_arg(p, f'a{i}') for i, p in enumerate(sig.params))})"
        lines.append(f"match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| {call})) {{")
        put = ""
        if sig.ret is not None:
            put = {"str": "crate::halo_wire::put_str(&mut o, v);", "slice": "crate::halo_wire::put_slice(&mut o, v);"}.get(
                sig.ret.extra, "crate::halo_wire::Wire::put(&v, &mut o);"
            )
        inouts = "".join(f" crate::halo_wire::Wire::put(&a{i}, &mut o);" for i, p in enumerate(sig.params) if p.mode == "inout")
        lines.append(f"    Ok(v) => {{ o.push(0); {put}{inouts} }}")
        lines.append("    Err(e) => { o.push(1); crate::halo_wire::put_str(&mut o, &crate::halo_wire::panic_message(&*e)); }")
        lines.append("}")
        cases.append(f"            Some({fid}) => {{\n" + "".join(f"                {x}\n" for x in lines) + "            }\n")
    return (
        "#[allow(unused, dead_code, unused_mut, unused_variables)]\n"
        "mod halo_server {\n"
        "    use crate::halo_wire::Wire;\n"
        "    pub fn serve() {\n"
        "        use ::std::os::unix::io::FromRawFd;\n"
        "        let (mut input, mut output) = unsafe { (::std::fs::File::from_raw_fd(4), ::std::fs::File::from_raw_fd(5)) };\n"
        "        ::std::panic::set_hook(::std::boxed::Box::new(|_| {}));\n"
        "        loop {\n"
        "            let frame = match crate::halo_wire::recv(&mut input) { Some(f) => f, None => return };\n"
        "            let mut r = crate::halo_wire::In::new(&frame);\n"
        "            let mut o: ::std::vec::Vec<u8> = ::std::vec::Vec::new();\n"
        "            match r.u32() {\n" + "".join(cases) + "            _ => return,\n"
        "            }\n"
        "            if !crate::halo_wire::send(&mut output, &o) { return; }\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def _rust_stubs(signatures: tuple[Signature, ...], n_sites: int) -> str:
    stubs = []
    for fid, sig in enumerate(signatures):
        lines = [f"let mut q = crate::halo_call::begin({fid});"]
        for i, p in enumerate(sig.params):
            if p.extra == "str":
                lines.append(f"crate::halo_wire::put_str(&mut q, a{i});")
            elif p.extra == "slice":
                lines.append(f"crate::halo_wire::put_slice(&mut q, a{i});")
            else:
                lines.append(f"crate::halo_wire::Wire::put(&{'*' if p.ref else ''}a{i}, &mut q);")
        lines.append("let reply = crate::halo_call::exchange(q);")
        lines.append("let mut r = crate::halo_wire::In::new(&reply);")
        if sig.ret is not None:
            lines.append(f"let v: {sig.ret.spelling} = crate::halo_call::take(&mut r);")
        for i, p in enumerate(sig.params):
            if p.mode == "inout":
                lines.append(f"let n{i}: {p.spelling} = crate::halo_call::take(&mut r);")
        lines.append("crate::halo_call::finish(&r);")
        for i, p in enumerate(sig.params):
            if p.mode == "inout" and p.extra == "slice":
                lines.append(f"if n{i}.len() != a{i}.len() {{ crate::halo_call::fail() }}")
                lines.append(f"for (d, s) in a{i}.iter_mut().zip(n{i}) {{ *d = s; }}")
            elif p.mode == "inout":
                lines.append(f"*a{i} = n{i};")
        if sig.ret is not None:
            if sig.ret.ref and sig.ret.extra == "str":
                lines.append("::std::boxed::Box::leak(v.into_boxed_str())")
            elif sig.ret.ref and sig.ret.extra == "slice":
                lines.append("::std::boxed::Box::leak(v.into_boxed_slice())")
            elif sig.ret.ref:
                lines.append("::std::boxed::Box::leak(::std::boxed::Box::new(v))")
            else:
                lines.append("v")
        stubs.append(f"    {sig.declaration('rust')} {{\n" + "".join(f"        {x}\n" for x in lines) + "    }\n")
    return (
        """
mod halo_call {
    use ::std::sync::atomic::{AtomicBool, Ordering};
    use ::std::sync::Mutex;
    pub static FAULT: AtomicBool = AtomicBool::new(false);
    pub static DEAD: AtomicBool = AtomicBool::new(false);
    pub static LINK: Mutex<Option<(::std::fs::File, ::std::fs::File)>> = Mutex::new(None);
    pub struct Fault;
    pub fn fail() -> ! {
        FAULT.store(true, Ordering::SeqCst);
        DEAD.store(true, Ordering::SeqCst);
        ::std::panic::panic_any(Fault)
    }
    pub fn begin(id: u32) -> Vec<u8> {
        if DEAD.load(Ordering::SeqCst) {
            FAULT.store(true, Ordering::SeqCst);
            ::std::panic::panic_any(Fault);
        }
        id.to_le_bytes().to_vec()
    }
    pub fn exchange(q: Vec<u8>) -> Vec<u8> {
        let reply = {
            let mut link = LINK.lock().unwrap_or_else(|e| e.into_inner());
            match link.as_mut() {
                Some((req, rep)) => if crate::halo_wire::send(req, &q) { crate::halo_wire::recv(rep) } else { None },
                None => None,
            }
        };
        let reply = match reply { Some(r) => r, None => fail() };
        let mut r = crate::halo_wire::In::new(&reply);
        match r.u8() {
            Some(0) => reply[1..].to_vec(),
            Some(1) => {
                let message: String = match r.get() { Some(m) => m, None => fail() };
                if !r.done() { fail() }
                ::std::panic::panic_any(message)
            }
            _ => fail(),
        }
    }
    pub fn take<T: crate::halo_wire::Wire>(r: &mut crate::halo_wire::In) -> T {
        match r.get() { Some(v) => v, None => fail() }
    }
    pub fn finish(r: &crate::halo_wire::In) {
        if !r.done() { fail() }
    }
}

mod halo_entries {
"""
        + "".join(stubs)
        + f"""}}
use halo_entries::*;

mod halo_report {{
    use ::std::io::Write;
    use ::std::sync::atomic::{{AtomicU8, Ordering}};
    use ::std::sync::Mutex;
    pub static EVENTS: Mutex<Option<::std::fs::File>> = Mutex::new(None);
    static STATE: [AtomicU8; {n_sites}] = [const {{ AtomicU8::new(0) }}; {n_sites}];
    pub fn event(kind: u8, k: usize) {{
        let mut b = vec![kind];
        b.extend_from_slice(&(k as u32).to_le_bytes());
        if let Some(f) = EVENTS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {{
            if f.write_all(&b).is_err() {{ ::std::process::exit(3) }}
        }}
    }}
    pub fn site(k: usize, ok: bool) {{
        let ok = ok && !crate::halo_call::FAULT.swap(false, Ordering::SeqCst);
        if k >= {n_sites} {{ return; }}
        if ok && STATE[k].compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {{ event(b'P', k) }}
        else if !ok && STATE[k].swap(2, Ordering::SeqCst) != 2 {{ event(b'F', k) }}
    }}
}}

macro_rules! halo_check {{
    ($k:expr, $($c:tt)*) => {{{{
        let ok = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| -> bool {{ $($c)* }}));
        crate::halo_report::site($k, matches!(ok, ::std::result::Result::Ok(true)));
    }}}};
}}

fn main() {{
    use ::std::os::unix::io::FromRawFd;
    extern "C" {{
        fn prctl(option: i32, a: u64, b: u64, c: u64, d: u64) -> i32;
    }}
    unsafe {{ prctl(4, 0, 0, 0, 0); }} // PR_SET_DUMPABLE 0: no process of another sample's uid may read or trace us
    let argv: Vec<String> = ::std::env::args().collect();
    let args: Vec<i32> = argv.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    if args.len() != 3 {{ ::std::process::exit(2) }}
    let _ = ::std::fs::remove_file(&argv[0]); // nothing of the tests stays on disk once the solution runs
    let (mut req, rep) = unsafe {{ (::std::fs::File::from_raw_fd(args[0]), ::std::fs::File::from_raw_fd(args[1])) }};
    *halo_report::EVENTS.lock().unwrap() = Some(unsafe {{ ::std::fs::File::from_raw_fd(args[2]) }});
    ::std::panic::set_hook(::std::boxed::Box::new(|_| {{}}));
    if !halo_wire::send(&mut req, b"go") {{ halo_call::DEAD.store(true, ::std::sync::atomic::Ordering::SeqCst); }}
    *halo_call::LINK.lock().unwrap() = Some((req, rep));
    let _ = ::std::panic::catch_unwind(halo_tests);
    halo_report::event(b'E', 0);
    ::std::process::exit(0);
}}
"""
    )
