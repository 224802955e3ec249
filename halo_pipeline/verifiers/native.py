"""What the trusted side reads from a C, C++ or Rust sample before anything runs (no compiler, no sandbox).

The native verifiers run a sample's tests in a process of their own, compiled from the tests and
from declarations of the entry points only; the solution runs in another process and answers calls
with plain data (`native_sources.py` writes both programs, `_harness_native.py` runs them). This
module finds what that needs, from text:

- the **check sites**: every `CHECK(` (C/C++) or `check!(` (Rust) token of the tests, outside strings
  and comments. Their number is the total; the trusted side counts it, not the program.
- the **entry points**: the sample's `entry_point` (a name or a list), or the names the tests call
  that the solution defines as top-level functions and no library declares;
- their **signatures**, from the prompt when it declares them (task data), else from the solution's
  definitions, parsed into a small type grammar of plain data (numbers, strings, std containers,
  pointer + length arrays in C). A signature outside the grammar (a struct, a template, a function
  pointer) cannot cross between the processes: the sample is refused with the reason.

Nothing here executes or compiles sample text; a parse is a pure function of the strings.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

Language = str  # "c" | "cpp" | "rust"


class Refused(ValueError):
    """The sample cannot be run safely by this design; the message says why (a reward of 0 with it)."""


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Tok:
    kind: str  # "id", "num", "str", "punct", "pp" (a whole C preprocessor line), "life" (a Rust lifetime)
    text: str
    start: int
    end: int


_C_PUNCT = ("...", "::", "->", "&&", "||", "##", "<<", "==", "!=", "<=", ">=", "++", "--", "+=", "-=", "*=", "/=")
_RUST_PUNCT = ("..=", "...", "::", "->", "=>", "..", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"\.?[0-9](?:[eEpP][+-]|[A-Za-z0-9_.'])*")


def c_tokens(src: str, pp_lines: bool = True) -> list[Tok]:
    """C/C++ tokens. Comments vanish; string and character literals are one token each (raw
    strings too); with `pp_lines`, each preprocessor directive is one "pp" token, else its tokens
    are given like any others (so a `CHECK(` inside a `#define` is found)."""
    out: list[Tok] = []
    i, n, line_start = 0, len(src), True
    while i < n:
        c = src[i]
        if c == "\n":
            i, line_start = i + 1, True
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        if c == "\\" and src.startswith("\n", i + 1):
            i += 2
            continue
        if src.startswith("//", i):
            i = _line_end(src, i)
            continue
        if src.startswith("/*", i):
            end = src.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if c == "#" and line_start and pp_lines:
            end = _pp_end(src, i)
            out.append(Tok("pp", src[i:end], i, end))
            i = end
            continue
        line_start = False
        m = _IDENT.match(src, i)
        if m:
            word = m.group()
            if src.startswith('"', m.end()) and word in ("R", "u8R", "uR", "UR", "LR"):
                end = _raw_string_end(src, m.end())
                out.append(Tok("str", src[i:end], i, end))
                i = end
                continue
            if src.startswith(("'", '"'), m.end()) and word in ("u8", "u", "U", "L"):
                end = _quoted_end(src, m.end())
                out.append(Tok("str", src[i:end], i, end))
                i = end
                continue
            out.append(Tok("id", word, i, m.end()))
            i = m.end()
            continue
        if c in "'\"":
            end = _quoted_end(src, i)
            out.append(Tok("str", src[i:end], i, end))
            i = end
            continue
        m = _NUMBER.match(src, i)
        if m:
            out.append(Tok("num", m.group(), i, m.end()))
            i = m.end()
            continue
        op = next((p for p in _C_PUNCT if src.startswith(p, i)), c)
        out.append(Tok("punct", op, i, i + len(op)))
        i += len(op)
    return out


def _line_end(src: str, i: int) -> int:
    end = src.find("\n", i)
    while end > 0 and src[end - 1] == "\\":
        end = src.find("\n", end + 1)
    return len(src) if end < 0 else end


def _pp_end(src: str, i: int) -> int:
    """The end of a preprocessor directive: its line, continued by backslashes, comments skipped."""
    j = i
    while j < len(src):
        if src.startswith("/*", j):
            end = src.find("*/", j + 2)
            j = len(src) if end < 0 else end + 2
        elif src.startswith("//", j):
            return _line_end(src, j)
        elif src[j] == "\\" and src.startswith("\n", j + 1):
            j += 2
        elif src[j] == "\n":
            return j
        elif src[j] in "'\"":
            j = _quoted_end(src, j)
        else:
            j += 1
    return j


def _quoted_end(src: str, i: int) -> int:
    quote, j = src[i], i + 1
    while j < len(src) and src[j] != quote and src[j] != "\n":
        j += 2 if src[j] == "\\" else 1
    return min(j + 1, len(src))


def _raw_string_end(src: str, i: int) -> int:
    open_paren = src.find("(", i + 1)
    if open_paren < 0 or open_paren - i > 17:
        return _quoted_end(src, i)
    closing = ")" + src[i + 1 : open_paren] + '"'
    end = src.find(closing, open_paren)
    return len(src) if end < 0 else end + len(closing)


def rust_tokens(src: str) -> list[Tok]:
    """Rust tokens: comments (nested) vanish; strings (raw, byte), characters and lifetimes are one token each."""
    out: list[Tok] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        if src.startswith("//", i):
            i = _line_end(src, i)
            continue
        if src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        raw = re.match(r"(?:b|c)?r(#*)\"", src[i : i + 260])
        if raw:
            closing = '"' + raw.group(1)
            end = src.find(closing, i + raw.end())
            end = n if end < 0 else end + len(closing)
            out.append(Tok("str", src[i:end], i, end))
            i = end
            continue
        if c in "bc" and src.startswith('"', i + 1) or c == '"':
            j = i + 1 if c == '"' else i + 2
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(Tok("str", src[i : j + 1], i, j + 1))
            i = j + 1
            continue
        if c == "'" or (c == "b" and src.startswith("'", i + 1)):
            j = i + 1 if c == "'" else i + 2
            m = re.match(r"\\(?:u\{[0-9a-fA-F_]{1,8}\}|x[0-9a-fA-F]{2}|.)'|[^\\\n]'", src[j : j + 16], re.DOTALL)
            if m:
                out.append(Tok("str", src[i : j + m.end()], i, j + m.end()))
                i = j + m.end()
                continue
            m = _IDENT.match(src, j)
            if m and c == "'":
                out.append(Tok("life", src[i : m.end()], i, m.end()))
                i = m.end()
                continue
        if src.startswith("r#", i) and _IDENT.match(src, i + 2):
            m = _IDENT.match(src, i + 2)
            assert m is not None
            out.append(Tok("id", m.group(), i, m.end()))
            i = m.end()
            continue
        m = _IDENT.match(src, i)
        if m:
            out.append(Tok("id", m.group(), i, m.end()))
            i = m.end()
            continue
        m = _NUMBER.match(src, i)
        if m and c != ".":
            out.append(Tok("num", m.group().replace("'", ""), i, m.end()))
            i = m.end()
            continue
        op = next((p for p in _RUST_PUNCT if src.startswith(p, i)), c)
        out.append(Tok("punct", op, i, i + len(op)))
        i += len(op)
    return out


def _matching(toks: list[Tok], i: int, opening: str = "(", closing: str = ")") -> int:
    """Index of the token closing the bracket at `i` (or len(toks) when unbalanced)."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].kind == "punct":
            if toks[j].text == opening:
                depth += 1
            elif toks[j].text == closing:
                depth -= 1
                if depth == 0:
                    return j
    return len(toks)


def _opening(toks: list[Tok], close: int, opening: str = "(", closing: str = ")") -> int:
    """Index of the bracket opening the one closing at `close` (-1 when unbalanced)."""
    depth = 0
    for j in range(close, -1, -1):
        if toks[j].kind == "punct" and toks[j].text == closing:
            depth += 1
        elif toks[j].kind == "punct" and toks[j].text == opening:
            depth -= 1
            if depth == 0:
                return j
    return -1


def _split_top(toks: list[Tok], sep: str = ",") -> list[list[Tok]]:
    """Split at top-level `sep` (outside (), [], {} and <>)."""
    parts: list[list[Tok]] = [[]]
    depth = 0
    for t in toks:
        if t.kind == "punct" and t.text in "([{<":
            depth += 1
        elif t.kind == "punct" and t.text in ")]}>":
            depth -= 1
        if t.kind == "punct" and t.text == sep and depth == 0:
            parts.append([])
        else:
            parts[-1].append(t)
    return parts if any(parts) else []


# ---------------------------------------------------------------- check sites


@dataclass(frozen=True)
class Sites:
    """The tests with each check site numbered: `HALO_CHECK(k, ...)` / `halo_check!(k, ...)`."""

    text: str
    sources: tuple[str, ...]  # each site's own text, for failure details


def number_checks(language: Language, test: str) -> Sites:
    """Number every `CHECK(` (C/C++) or `check!(` (Rust) site of the tests, outside strings and comments."""
    toks = rust_tokens(test) if language == "rust" else c_tokens(test, pp_lines=False)
    pieces: list[str] = []
    sources: list[str] = []
    last = 0
    for i, t in enumerate(toks):
        if language == "rust":
            hit = t.text == "check" and _next_is(toks, i, "!") and _next_is(toks, i + 1, "(") and not _prev_is(toks, i, "::", ".")
            paren = i + 2
        else:
            hit = t.kind == "id" and t.text == "CHECK" and _next_is(toks, i, "(") and not _prev_is(toks, i, "::", ".", "->")
            paren = i + 1
        if not hit:
            continue
        k = len(sources)
        close = _matching(toks, paren)
        end = toks[close].end if close < len(toks) else len(test)
        sources.append(_clip(" ".join(test[t.start : end].split())))
        pieces.append(test[last : t.start])
        pieces.append(f"halo_check!({k}, " if language == "rust" else f"HALO_CHECK({k}, ")
        last = toks[paren].end
    pieces.append(test[last:])
    return Sites("".join(pieces), tuple(sources))


def _next_is(toks: list[Tok], i: int, text: str) -> bool:
    return i + 1 < len(toks) and toks[i + 1].kind == "punct" and toks[i + 1].text == text


def _prev_is(toks: list[Tok], i: int, *texts: str) -> bool:
    return i > 0 and toks[i - 1].kind == "punct" and toks[i - 1].text in texts


def _clip(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."


def named(language: Language, test: str) -> list[str]:
    """The free names the tests use (not after `.`, `->` or `::`; not a macro), in order: a function they
    call, or take as a value (`int (*f)(int) = add;`)."""
    toks = rust_tokens(test) if language == "rust" else c_tokens(test, pp_lines=False)
    found: dict[str, None] = {}
    for i, t in enumerate(toks):
        if t.kind == "id" and not _prev_is(toks, i, ".", "->", "::") and not _next_is(toks, i, "!"):
            found.setdefault(t.text, None)
    return list(found)


def own_functions(language: Language, test: str) -> set[str]:
    """Functions and variables the tests bind themselves (Rust `fn f`/`let f`, C++ `auto f =`): never the solution's."""
    toks = rust_tokens(test) if language == "rust" else c_tokens(test, pp_lines=False)
    bound = set()
    for i, t in enumerate(toks[:-1]):
        nxt = toks[i + 1]
        if nxt.kind == "id" and t.text in ("fn", "let", "auto", "mut"):
            bound.add(nxt.text)
        if t.kind == "id" and nxt.kind == "punct" and nxt.text == "=" and i > 0 and toks[i - 1].kind == "id":
            bound.add(t.text)  # `T name = ...` (C/C++ variables, lambdas)
    return bound


# ---------------------------------------------------------------- types


@dataclass(frozen=True)
class Scalar:
    spelling: str  # canonical C/C++ spelling, or the Rust type
    kind: str  # "int", "uint", "bool", "float", "char" (Rust char)
    lo: str = ""  # C: the range macros (limits.h / stdint.h) checked on decoding
    hi: str = ""


@dataclass(frozen=True)
class Param:
    """One parameter (or the return value) of an entry point, as it crosses between the processes.

    mode: "in" (sent), "inout" (sent, and the solution's changes come back), "out" (only comes back:
    C's `int *returnSize`), "ret" (a return value). form: "value" (any type of the grammar, by value
    or reference), "cstr" (a C string), "array" (C: a pointer whose length is the next parameter),
    "ptr" (C: one element through a pointer), "array_ret" (C: a returned array, length in returnSize).
    """

    spelling: str  # the canonical value type (C++: `std::vector<int>`; Rust: `::std::vec::Vec<i32>`)
    decl: str  # how it is written in the declaration (`const std::vector<int> &`, `&mut Vec<i32>`, `int *`)
    mode: str = "in"
    form: str = "value"
    scalar: Scalar | None = None  # the element of a C pointer, or a C scalar
    ref: str = ""  # C++: "", "&", "&&"; Rust: "", "&", "&mut"
    extra: str = ""  # Rust: "str" / "slice" for &str / &[T]; C: "returnSize"


@dataclass(frozen=True)
class Signature:
    name: str
    params: tuple[Param, ...]
    ret: Param | None  # None: returns nothing
    defaults: tuple[str | None, ...] = ()  # C++ default arguments (literals only)

    def declaration(self, language: Language, name: str | None = None) -> str:
        """The declaration the tests compile against (C/C++), or the stub's head (Rust)."""
        name = name or self.name
        if language == "rust":
            params = ", ".join(f"a{i}: {p.decl}" for i, p in enumerate(self.params))
            ret = f" -> {self.ret.decl}" if self.ret else ""
            return f"pub fn {name}({params}){ret}"
        params = ", ".join(
            _c_declarator(p, f"a{i}") + (f" = {d}" if d is not None else "")
            for i, (p, d) in enumerate(zip(self.params, self.defaults or (None,) * len(self.params), strict=True))
        )
        ret = self.ret.decl if self.ret else "void"
        return f"{ret} {name}({params or ('void' if language == 'c' else '')})"


def _c_declarator(p: Param, name: str) -> str:
    return f"{p.decl}{name}" if p.decl.endswith(("*", "&")) else f"{p.decl} {name}"


_C_INT_RANGES = {
    "char": ("int", "CHAR_MIN", "CHAR_MAX"),
    "signed char": ("int", "SCHAR_MIN", "SCHAR_MAX"),
    "unsigned char": ("uint", "0", "UCHAR_MAX"),
    "short": ("int", "SHRT_MIN", "SHRT_MAX"),
    "unsigned short": ("uint", "0", "USHRT_MAX"),
    "int": ("int", "INT_MIN", "INT_MAX"),
    "unsigned int": ("uint", "0", "UINT_MAX"),
    "long": ("int", "LONG_MIN", "LONG_MAX"),
    "unsigned long": ("uint", "0", "ULONG_MAX"),
    "long long": ("int", "LLONG_MIN", "LLONG_MAX"),
    "unsigned long long": ("uint", "0", "ULLONG_MAX"),
}
_C_TYPEDEFS = {
    "size_t": ("size_t", "uint", "0", "SIZE_MAX"),
    "ptrdiff_t": ("ptrdiff_t", "int", "PTRDIFF_MIN", "PTRDIFF_MAX"),
    **{f"int{b}_t": (f"int{b}_t", "int", f"INT{b}_MIN", f"INT{b}_MAX") for b in (8, 16, 32, 64)},
    **{f"uint{b}_t": (f"uint{b}_t", "uint", "0", f"UINT{b}_MAX") for b in (8, 16, 32, 64)},
}
_C_TYPE_WORDS = {"signed", "unsigned", "short", "long", "int", "char", "float", "double", "bool", "_Bool", "void"}
_CPP_SEQUENCES = {"vector": 1, "deque": 1, "list": 1, "set": 1, "multiset": 1, "unordered_set": 1, "optional": 1}
_CPP_TEMPLATES = {**_CPP_SEQUENCES, "map": 2, "unordered_map": 2, "pair": 2, "tuple": -1, "array": 2}
CPP_HEADERS = {  # the std types of the grammar (the wire's HALO_NEED_<name>) and their headers
    "string": "string",
    "string_view": "string_view",
    "vector": "vector",
    "deque": "deque",
    "list": "list",
    "set": "set",
    "multiset": "set",
    "unordered_set": "unordered_set",
    "optional": "optional",
    "map": "map",
    "unordered_map": "unordered_map",
    "pair": "utility",
    "tuple": "tuple",
    "array": "array",
}


def _c_scalar(words: list[str], cpp: bool) -> Scalar | None:
    words = [w for w in words if w not in ("const", "volatile")]
    if len(words) == 1 and words[0] in ("bool", "_Bool"):
        return Scalar("bool", "bool")
    if len(words) == 1 and words[0] in ("float", "double"):
        return Scalar(words[0], "float")
    if len(words) == 1 and (words[0] in _C_TYPEDEFS or (cpp and words[0].startswith("std::") and words[0][5:] in _C_TYPEDEFS)):
        spelling, kind, lo, hi = _C_TYPEDEFS[words[0].removeprefix("std::")]
        return Scalar(spelling, kind, lo, hi)
    # integers: the specifiers in any order (`long unsigned int` is `unsigned long`)
    if (
        not words
        or set(words) - {"signed", "unsigned", "short", "long", "int", "char"}
        or len(words) != len(set(words)) + max(0, words.count("long") - 1)
    ):
        return None
    unsigned, longs = "unsigned" in words, words.count("long")
    if (
        "signed" in words
        and unsigned
        or longs > 2
        or ("short" in words or "char" in words)
        and (longs or ("short" in words and "char" in words))
    ):
        return None
    if "char" in words:
        base = "char" if words == ["char"] else ("unsigned char" if unsigned else "signed char")
    else:
        base = "short" if "short" in words else ("long long" if longs == 2 else "long" if longs else "int")
        base = f"unsigned {base}" if unsigned else base
    kind, lo, hi = _C_INT_RANGES[base]
    return Scalar(base, kind, lo, hi)


class _TypeError(ValueError):
    pass


def c_param(toks: list[Tok], language: Language, aliases: dict[str, list[Tok]], is_return: bool = False) -> tuple[Param, str | None]:
    """One C/C++ parameter (or return type) in the grammar, and its name (None if unnamed)."""
    cpp = language == "cpp"
    toks = _expand_aliases(toks, aliases)
    toks = [t for t in toks if t.text not in ("struct", "typename", "register", "restrict", "__restrict", "__restrict__")]
    name = None
    last = toks[-1] if toks else None
    if len(toks) > 1 and last is not None and last.kind == "id" and last.text not in (*_C_TYPE_WORDS, "const") and toks[-2].text != "::":
        name, toks = last.text, toks[:-1]
    if toks and toks[-1].kind == "punct" and toks[-1].text == "]":  # `int a[]`, `int a[10]`: a pointer
        opening = _opening(toks, len(toks) - 1, "[", "]")
        if opening < 0:
            raise _TypeError("an unbalanced `]`")
        if name is None and opening > 0 and toks[opening - 1].kind == "id" and toks[opening - 1].text not in _C_TYPE_WORDS:
            name = toks[opening - 1].text
            toks = toks[: opening - 1] + [Tok("punct", "*", 0, 0)]
        else:
            toks = toks[:opening] + [Tok("punct", "*", 0, 0)]
        if any(t.text == "[" for t in toks):
            raise _TypeError("a multi-dimensional array")
    if any(t.text in ("(", ")") for t in toks):
        raise _TypeError("a function pointer")
    ref = ""
    while toks and toks[-1].text in ("&", "&&") and cpp:
        ref = toks[-1].text + ref
        toks = toks[:-1]
    stars = 0
    pointee_const = False
    while toks and (toks[-1].text == "*" or (toks[-1].text == "const" and stars == 0 and any(t.text == "*" for t in toks))):
        if toks[-1].text == "*":
            stars += 1
        toks = toks[:-1]
    if stars > 1:
        raise _TypeError("a pointer to a pointer")
    const = any(t.text == "const" for t in toks)
    base = [t for t in toks if t.text != "const"]
    if stars:
        pointee_const = const
        if ref:
            raise _TypeError("a reference to a pointer")
        return _c_pointer(base, pointee_const, cpp, name, is_return), name
    if not base:
        raise _TypeError("no type")
    words = [t.text for t in base]
    if words == ["void"]:
        if not is_return:
            raise _TypeError("void")
        return Param("void", "void", "ret"), name
    scalar = _c_scalar(_join_std(base), cpp)
    if scalar is not None:
        mode = "ret" if is_return else ("inout" if ref == "&" and not const else "in")
        decl = ("const " if const else "") + scalar.spelling + (f" {ref}" if ref else "")
        return Param(scalar.spelling, decl, mode, "value", scalar, ref), name
    if not cpp:
        raise _TypeError(f"`{' '.join(words)}` (C: numbers, bool, strings and arrays of numbers cross between the processes)")
    spelling = _cpp_type(base, 0)
    if is_return and ref:
        raise _TypeError("a returned reference")
    if spelling == "std::string_view" and (is_return or ref == "&" and not const):
        raise _TypeError("a returned or mutable std::string_view")
    mode = "ret" if is_return else ("inout" if ref == "&" and not const else "in")
    decl = ("const " if const else "") + spelling + (f" {ref}" if ref else "")
    return Param(spelling, decl, mode, "value", None, ref), name


def _join_std(base: list[Tok]) -> list[str]:
    """`std :: size_t` -> ["std::size_t"]; other words as they are."""
    words, i = [], 0
    while i < len(base):
        if base[i].text in ("std", "") and i + 2 < len(base) and base[i + 1].text == "::":
            words.append("std::" + base[i + 2].text)
            i += 3
        elif base[i].text == "::":
            i += 1
        else:
            words.append(base[i].text)
            i += 1
    return words


def _c_pointer(base: list[Tok], const: bool, cpp: bool, name: str | None, is_return: bool) -> Param:
    words = [t.text for t in base]
    if words in (["char"], ["std::char"]):
        mode = "ret" if is_return else ("in" if const else "inout")
        return Param("char *", ("const char *" if const else "char *"), mode, "cstr")
    scalar = _c_scalar(_join_std(base), cpp)
    if scalar is None or scalar.kind == "bool" and not cpp and words == ["_Bool"]:
        raise _TypeError(f"a pointer to `{' '.join(words)}`")
    decl = ("const " if const else "") + scalar.spelling + " *"
    if is_return:
        return Param(scalar.spelling, decl, "ret", "array_ret", scalar)
    if name == "returnSize" and scalar.spelling == "int" and not const:
        return Param(scalar.spelling, decl, "out", "ptr", scalar, extra="returnSize")
    return Param(scalar.spelling, decl, "in" if const else "inout", "ptr", scalar)


def _cpp_type(toks: list[Tok], depth: int) -> str:
    """A C++ value type of the grammar, canonically spelled (`std::vector<std::pair<int, std::string>>`)."""
    if depth > 8:
        raise _TypeError("a type nested too deeply")
    toks = [t for t in toks if t.text != "const"]
    words = _join_std(toks[: next((i for i, t in enumerate(toks) if t.text == "<"), len(toks))])
    if "<" not in [t.text for t in toks]:
        scalar = _c_scalar(words, True)
        if scalar is not None:
            return scalar.spelling
        if words in (["std::string"], ["string"]):
            return "std::string"
        if words in (["std::string_view"], ["string_view"]):
            return "std::string_view"
        raise _TypeError(f"`{' '.join(t.text for t in toks)}`")
    if len(words) != 1:
        raise _TypeError(f"`{' '.join(t.text for t in toks)}`")
    template = words[0].removeprefix("std::")
    arity = _CPP_TEMPLATES.get(template)
    opening = next(i for i, t in enumerate(toks) if t.text == "<")
    closing = _matching(toks, opening, "<", ">")
    if arity is None or closing != len(toks) - 1:
        raise _TypeError(f"`{' '.join(t.text for t in toks)}`")
    args = _split_top(toks[opening + 1 : closing])
    if template == "array":
        if len(args) != 2 or len(args[1]) != 1 or args[1][0].kind != "num" or not args[1][0].text.isdigit():
            raise _TypeError("std::array needs a literal size")
        return f"std::array<{_cpp_type(args[0], depth + 1)}, {int(args[1][0].text)}>"
    if arity >= 0 and len(args) != arity or not args:
        raise _TypeError(f"`{' '.join(t.text for t in toks)}`")
    inner = ", ".join(_cpp_type(a, depth + 1) for a in args)
    if "string_view" in inner:
        raise _TypeError("std::string_view inside a container")
    return f"std::{template}<{inner}>"


def _expand_aliases(toks: list[Tok], aliases: dict[str, list[Tok]], depth: int = 0) -> list[Tok]:
    if depth > 8 or not aliases:
        return toks
    out: list[Tok] = []
    changed = False
    for i, t in enumerate(toks):
        if t.kind == "id" and t.text in aliases and not _prev_is(toks, i, "::"):
            out.extend(aliases[t.text])
            changed = True
        else:
            out.append(t)
    return _expand_aliases(out, aliases, depth + 1) if changed else out


# ---------------------------------------------------------------- C and C++ declarations


@dataclass(frozen=True)
class Fn:
    """A top-level function as written: its return type's and parameters' tokens."""

    ret: list[Tok]
    params: list[Tok]
    templated: bool  # a template (C++), generic, async or unsafe (Rust): never an entry point
    complete: bool  # a definition with its whole body (not a prototype, nor a prompt's open `... {`)
    start: int  # where its declaration starts in the text


@dataclass
class Scan:
    """What a C/C++/Rust source declares at top level."""

    functions: dict[str, list[Fn]] = field(default_factory=dict)
    visibility: dict[str, tuple[int, int]] = field(default_factory=dict)  # Rust: where `pub` goes (start, end of what it replaces)
    aliases: dict[str, list[Tok]] = field(default_factory=dict)
    includes: list[str] = field(default_factory=list)  # `#include <...>` lines


_SPECIFIERS = {
    "static",
    "inline",
    "extern",
    "constexpr",
    "consteval",
    "friend",
    "virtual",
    "explicit",
    "_Noreturn",
    "__inline",
    "__inline__",
}


def scan_c(src: str) -> Scan:
    """Top-level function definitions and prototypes, type aliases, includes and using-directives."""
    toks = c_tokens(src)
    scan = Scan()
    stmt: list[Tok] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.kind == "pp":
            _pp_directive(t.text, scan)
        elif t.kind == "punct" and t.text == ";":
            _statement(stmt, scan, None)
            stmt = []
        elif t.kind == "punct" and t.text == "{":
            words = [s.text for s in stmt]
            if len(stmt) == 2 and words[0] == "extern" and stmt[1].kind == "str":
                stmt = []  # extern "C" { ...: its contents are top level
            elif _statement(stmt, scan, _matching(toks, i, "{", "}") < len(toks)):
                i = _matching(toks, i, "{", "}")
                stmt = []
            else:  # a namespace, class, struct, enum, union, initializer or lambda: skipped
                i = _matching(toks, i, "{", "}")
                stmt = [] if words[:1] == ["namespace"] else [*stmt, Tok("punct", "{}", 0, 0)]
        elif t.kind == "punct" and t.text == "}":
            stmt = []
        else:
            stmt.append(t)
        i += 1
    return scan


def _pp_directive(text: str, scan: Scan) -> None:
    body = " ".join(text.replace("\\\n", " ").split())
    include = re.fullmatch(r"#\s*include\s*<([A-Za-z0-9_./+-]+)>.*", body)
    if include:
        scan.includes.append(include.group(1))
        return
    define = re.fullmatch(r"#\s*define\s+([A-Za-z_]\w*)(\s+.*)?", body)
    if define and define.group(2):  # object-like (a function-like macro has `(` right after the name)
        value = c_tokens(define.group(2))
        if value and all(t.kind == "id" or t.text in ("*", "&", "::", "<", ">", ",") for t in value):
            scan.aliases[define.group(1)] = value


def _statement(stmt: list[Tok], scan: Scan, body: bool | None) -> bool:
    """Record a function (a definition when `body` is given: whether it closes; else a prototype), a typedef
    or a using; True for a function definition."""
    begin = stmt[0].start if stmt else 0
    stmt = _strip_attributes(stmt)
    if not stmt:
        return False
    words = [t.text for t in stmt]
    if words[0] == "typedef" and body is None:
        if len(stmt) > 2 and stmt[-1].kind == "id" and "(" not in words:
            scan.aliases[stmt[-1].text] = stmt[1:-1]
        return False
    if words[0] == "using" and body is None:
        if len(stmt) > 3 and words[1] != "namespace" and stmt[1].kind == "id" and words[2] == "=":
            scan.aliases[stmt[1].text] = stmt[3:]
        return False
    templated = False
    if words[0] == "template":
        templated = True
        stmt = stmt[_matching(stmt, 1, "<", ">") + 1 :] if len(stmt) > 1 and words[1] == "<" else stmt[1:]
        words = [t.text for t in stmt]
    if any(w in ("=", "{}", "class", "struct", "union", "enum", "namespace", "typedef", "operator") for w in words[:1]):
        return False
    opening = _name_paren(stmt)
    if opening is None:
        return False
    name = stmt[opening - 1].text
    close = _matching(stmt, opening)
    if close >= len(stmt):
        return False
    ret = [t for t in stmt[: opening - 1] if t.text not in _SPECIFIERS]
    tail = stmt[close + 1 :]
    if tail and tail[0].text == "->":  # trailing return type
        if [t.text for t in ret] != ["auto"]:
            return False
        ret = [t for t in tail[1:] if t.text not in ("noexcept", "override", "final")]
    elif any(t.text not in ("noexcept", "throw", "(", ")") for t in tail):
        return False  # `const` (a method), `= 0`, an initializer ...
    if not ret or any(t.text in ("=", "{}") for t in ret):
        return False
    scan.functions.setdefault(name, []).append(Fn(ret, stmt[opening + 1 : close], templated, bool(body), begin))
    return body is not None


def _name_paren(stmt: list[Tok]) -> int | None:
    """Index of the `(` after a function's (unqualified) name, at the statement's top level."""
    depth = 0
    for i, t in enumerate(stmt):
        if t.kind == "punct" and t.text in "([":
            if t.text == "(" and depth == 0 and i > 0 and stmt[i - 1].kind == "id":
                if _prev_is(stmt, i - 1, "::") or stmt[i - 1].text in ("decltype", "sizeof", "alignof", "__attribute__"):
                    return None
                return i
            depth += 1
        elif t.kind == "punct" and t.text in ")]":
            depth -= 1
        elif t.kind == "punct" and t.text == "=" and depth == 0:
            return None
    return None


def _strip_attributes(stmt: list[Tok]) -> list[Tok]:
    out: list[Tok] = []
    i = 0
    while i < len(stmt):
        t = stmt[i]
        if t.text in ("__attribute__", "__declspec", "alignas") and _next_is(stmt, i, "("):
            i = _matching(stmt, i + 1) + 1
            continue
        if t.text == "[" and _next_is(stmt, i, "["):
            i = _matching(stmt, i, "[", "]") + 1
            continue
        out.append(t)
        i += 1
    return out


def c_signature(name: str, language: Language, scan: Scan) -> list[Signature]:
    """The entry point's signatures (C++ overloads: one each) in the grammar, or Refused."""
    found = scan.functions.get(name)
    if not found:
        raise Refused(f"`{name}` is not defined as a plain top-level function")
    sigs: dict[str, Signature] = {}
    for fn in found:
        if fn.templated:
            raise Refused(f"`{name}` is a template: only functions of plain types cross between the tests' process and the solution's")
        try:
            sig = _c_sig(name, language, fn.ret, fn.params, scan.aliases)
        except _TypeError as exc:
            raise Refused(
                f"`{name}` takes or returns {exc}, which cannot cross between the tests' process and the solution's "
                "(numbers, bool, strings, std containers of them, and C arrays with their length can)"
            ) from None
        sigs.setdefault(sig.declaration(language), sig)
    if language == "c" and len(sigs) > 1:
        raise Refused(f"`{name}` is declared with two different signatures")
    return list(sigs.values())


_LITERAL = re.compile(r"-?(?:[0-9][0-9a-zA-Z_.']*|'(?:\\.|[^'\\])'|\"(?:\\.|[^\"\\])*\"|true|false|nullptr|NULL|\{\})")


def _c_sig(name: str, language: Language, ret_toks: list[Tok], param_toks: list[Tok], aliases: dict[str, list[Tok]]) -> Signature:
    ret, _ = c_param(ret_toks, language, aliases, is_return=True)
    parts = _split_top(param_toks)
    if [[t.text for t in p] for p in parts] == [["void"]]:
        parts = []
    params: list[Param] = []
    defaults: list[str | None] = []
    for part in parts:
        if any(t.text == "..." for t in part):
            raise _TypeError("a variable argument list")
        default = None
        eq = next((i for i, t in enumerate(part) if t.text == "="), None)
        if eq is not None:
            default = "".join(t.text for t in part[eq + 1 :])
            if language != "cpp" or not _LITERAL.fullmatch(default):
                raise _TypeError("a default argument that is not a literal")
            part = part[:eq]
        params.append(c_param(part, language, aliases)[0])
        defaults.append(default)
    params = _c_arrays(params)
    if ret.form == "array_ret" and not any(p.extra == "returnSize" for p in params):
        raise _TypeError("a pointer (an array whose length no `int *returnSize` parameter gives)")
    if ret.form == "array_ret" and ret.scalar is not None and ret.scalar.spelling == "char":
        ret = Param("char *", ret.decl, "ret", "cstr")
    return Signature(name, tuple(params), None if ret.spelling == "void" else ret, tuple(defaults) if language == "cpp" else ())


def _c_arrays(params: list[Param]) -> list[Param]:
    """A pointer followed by an integer parameter is an array of that length (`int *xs, int n`)."""
    out = list(params)
    for i, p in enumerate(out):
        nxt = out[i + 1] if i + 1 < len(out) else None
        length = (
            nxt is not None and nxt.form == "value" and nxt.scalar is not None and nxt.scalar.kind in ("int", "uint") and nxt.mode == "in"
        )
        if p.form == "ptr" and not p.extra and length:
            out[i] = Param(p.spelling, p.decl, p.mode, "array", p.scalar)
    return out


# ---------------------------------------------------------------- library names


@functools.cache
def c_library_names(compiler: str) -> frozenset[str]:
    """Functions the C and math libraries export: what the tests mean by those names, never the solution's."""
    names: set[str] = set()
    for lib in ("libc.so.6", "libm.so.6"):
        try:
            path = subprocess.run([compiler, f"-print-file-name={lib}"], capture_output=True, text=True, timeout=60).stdout.strip()
            listing = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in listing.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[1] in "TtWwi":
                names.add(fields[2].split("@")[0])
    return frozenset(n for n in names if not n.startswith("_"))


@functools.cache
def cpp_library_names(compiler: str, prelude: str) -> frozenset[str]:
    """Every name the C++ prelude's headers call or declare as a function (`name(`): a superset of what
    the standard library offers the tests unqualified (a using-directive, or argument-dependent lookup)."""
    try:
        text = subprocess.run(
            [compiler, "-x", "c++", "-std=c++17", "-E", "-P", "-"], input=prelude, capture_output=True, text=True, timeout=120
        ).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    names = frozenset(re.findall(r"\b([A-Za-z][A-Za-z0-9_]*)\s*\(", text))
    return names | c_library_names(compiler) if names else frozenset()  # none: unknown, and the caller refuses to guess


RUST_PRELUDE_FUNCTIONS = frozenset({"drop"})


# ---------------------------------------------------------------- Rust declarations

_RUST_INTS = {f"{s}{b}": ("int" if s == "i" else "uint") for s in "iu" for b in ("8", "16", "32", "64", "128", "size")}
_RUST_SEQ = {"Vec": "::std::vec::Vec", "VecDeque": "::std::collections::VecDeque", "HashSet": "::std::collections::HashSet"}
_RUST_SEQ |= {"BTreeSet": "::std::collections::BTreeSet", "Option": "::std::option::Option", "Box": "::std::boxed::Box"}
_RUST_MAPS = {"HashMap": "::std::collections::HashMap", "BTreeMap": "::std::collections::BTreeMap", "Result": "::std::result::Result"}
_RUST_PATH_PREFIXES = (
    "std::collections::",
    "std::vec::",
    "std::string::",
    "std::option::",
    "std::result::",
    "std::boxed::",
    "collections::",
)


def scan_rust(src: str) -> Scan:
    """Top-level `fn` items (not methods), and `type` aliases."""
    toks = rust_tokens(src)
    scan = Scan()
    i, depth = 0, 0
    while i < len(toks):
        t = toks[i]
        if t.kind == "punct" and t.text == "{":
            depth += 1
        elif t.kind == "punct" and t.text == "}":
            depth -= 1
        elif depth == 0 and t.kind == "id" and t.text in ("impl", "trait", "mod", "macro_rules", "struct", "enum", "union"):
            j = i
            while j < len(toks) and toks[j].text not in ("{", ";"):
                j += 1
            i = _matching(toks, j, "{", "}") if j < len(toks) and toks[j].text == "{" else j
        elif depth == 0 and t.text == "type" and i + 2 < len(toks) and toks[i + 1].kind == "id" and toks[i + 2].text == "=":
            end = next((j for j in range(i, len(toks)) if toks[j].text == ";"), len(toks))
            scan.aliases[toks[i + 1].text] = toks[i + 3 : end]
            i = end
        elif depth == 0 and t.text == "fn" and i + 1 < len(toks) and toks[i + 1].kind == "id":
            i = _rust_fn(toks, i, scan)
            continue
        i += 1
    return scan


def _rust_fn(toks: list[Tok], i: int, scan: Scan) -> int:
    name = toks[i + 1].text
    j = i + 2
    generics: list[Tok] = []
    if j < len(toks) and toks[j].text == "<":
        close = _matching(toks, j, "<", ">")
        generics = toks[j + 1 : close]
        j = close + 1
    if j >= len(toks) or toks[j].text != "(":
        return j
    close = _matching(toks, j)
    params = toks[j + 1 : close]
    k = close + 1
    ret: list[Tok] = []
    if k < len(toks) and toks[k].text == "->":
        k += 1
        start = k
        depth = 0
        while k < len(toks) and not (depth == 0 and toks[k].text in ("{", ";", "where")):
            depth += toks[k].text in "(<[" and toks[k].kind == "punct"
            depth -= toks[k].text in ")>]" and toks[k].kind == "punct"
            k += 1
        ret = toks[start:k]
    while k < len(toks) and toks[k].text not in ("{", ";"):
        k += 1
    prefix = [t.text for t in toks[max(0, i - 4) : i]]
    templated = any(g.kind != "life" and g.text not in (",", ":") for g in generics) or "async" in prefix or "unsafe" in prefix
    start = i  # the qualifiers before `fn` (`const`, `extern "C"`), then any visibility: replaced by `pub`
    while start > 0 and (toks[start - 1].text in ("const", "extern", "unsafe", "async") or toks[start - 1].kind == "str"):
        start -= 1
    end = start
    if start > 0 and toks[start - 1].text == ")" and (opening := _opening(toks, start - 1)) > 0 and toks[opening - 1].text == "pub":
        start = opening - 1
    elif start > 0 and toks[start - 1].text == "pub":
        start -= 1
    scan.visibility.setdefault(name, (toks[start].start, toks[end].start if end > start else toks[start].start))
    begin = start
    while (
        begin > 1 and toks[begin - 1].text == "]" and (opening := _opening(toks, begin - 1, "[", "]")) > 0 and toks[opening - 1].text == "#"
    ):
        begin = opening - 1  # its attributes
    complete = k < len(toks) and toks[k].text == "{" and _matching(toks, k, "{", "}") < len(toks)
    scan.functions.setdefault(name, []).append(Fn(ret, params, templated, complete, toks[begin].start))
    return _matching(toks, k, "{", "}") + 1 if k < len(toks) and toks[k].text == "{" else k + 1


def rust_signature(name: str, scan: Scan) -> Signature:
    found = scan.functions.get(name)
    if not found:
        raise Refused(f"`{name}` is not defined as a plain top-level function")
    if len(found) > 1:
        raise Refused(f"`{name}` is defined more than once")
    ret_toks, param_toks = found[0].ret, found[0].params
    if found[0].templated:
        raise Refused(
            f"`{name}` is generic, async or unsafe: only functions of plain types cross between the tests' process and the solution's"
        )
    try:
        params = []
        for part in _split_top(param_toks):
            colon = next((i for i, t in enumerate(part) if t.text == ":"), None)
            if colon is None:
                raise _TypeError("`self` (a method)")
            params.append(_rust_param(part[colon + 1 :], scan.aliases))
        ret = _rust_param(ret_toks, scan.aliases, is_return=True) if ret_toks else None
    except _TypeError as exc:
        raise Refused(
            f"`{name}` takes or returns {exc}, which cannot cross between the tests' process and the solution's "
            "(numbers, bool, char, strings, Vec, Option, Result, tuples, arrays and std collections of them can)"
        ) from None
    if ret is not None and ret.spelling == "()":
        ret = None
    return Signature(name, tuple(params), ret)


def _rust_param(toks: list[Tok], aliases: dict[str, list[Tok]], is_return: bool = False) -> Param:
    toks = [t for t in _expand_aliases(toks, aliases) if t.kind != "life"]
    ref = ""
    if toks and toks[0].text == "&":
        ref = "&"
        toks = toks[1:]
        if toks and toks[0].text == "mut":
            ref, toks = "&mut", toks[1:]
    if toks and toks[0].text == "mut":
        toks = toks[1:]
    if ref and toks and toks[0].text == "&":
        raise _TypeError("a reference to a reference")
    extra = ""
    if ref and [t.text for t in toks] == ["str"]:
        spelling, extra = "::std::string::String", "str"
    elif ref and toks and toks[0].text == "[" and toks[-1].text == "]" and not any(t.text == ";" for t in toks):
        spelling, extra = f"::std::vec::Vec<{_rust_type(toks[1:-1], 0)}>", "slice"
    else:
        spelling = _rust_type(toks, 0)
    if is_return and ref == "&mut":
        raise _TypeError("a returned mutable reference")
    mode = "ret" if is_return else ("inout" if ref == "&mut" else "in")
    value = {"str": "str", "slice": "[" + spelling[len("::std::vec::Vec<") : -1] + "]"}.get(extra, spelling)
    decl = (f"{ref} " if ref == "&mut" else ref) + ("'static " if is_return and ref else "") + value
    return Param(spelling, decl, mode, "value", None, ref, extra)


def _rust_type(toks: list[Tok], depth: int) -> str:
    if depth > 8:
        raise _TypeError("a type nested too deeply")
    text = "".join(t.text for t in toks)
    if not toks:
        raise _TypeError("no type")
    if toks[0].text == "(":
        close = _matching(toks, 0)
        if close != len(toks) - 1:
            raise _TypeError(f"`{text}`")
        items = _split_top(toks[1:-1])
        if not items:
            return "()"
        inner = [_rust_type(p, depth + 1) for p in items if p]
        return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"
    if toks[0].text == "[":
        semi = next((i for i, t in enumerate(toks) if t.text == ";"), None)
        if semi is None or toks[-1].text != "]" or len(toks) != semi + 3 or not toks[semi + 1].text.isdigit():
            raise _TypeError(f"`{text}` (an array needs a literal length)")
        return f"[{_rust_type(toks[1:semi], depth + 1)}; {int(toks[semi + 1].text)}]"
    path = text.split("<", 1)[0].lstrip(":")
    for prefix in _RUST_PATH_PREFIXES:
        path = path.removeprefix(prefix)
    if all(t.text != "<" for t in toks):
        if path in _RUST_INTS or path in ("f32", "f64", "bool", "char"):
            return path
        if path == "String":
            return "::std::string::String"
        raise _TypeError(f"`{text}`")
    opening = next(i for i, t in enumerate(toks) if t.text == "<")
    close = _matching(toks, opening, "<", ">")
    if close != len(toks) - 1:
        raise _TypeError(f"`{text}`")
    args = _split_top(toks[opening + 1 : close])
    if path in _RUST_SEQ and len(args) == 1:
        return f"{_RUST_SEQ[path]}<{_rust_type(args[0], depth + 1)}>"
    if path in _RUST_MAPS and len(args) == 2:
        return f"{_RUST_MAPS[path]}<{_rust_type(args[0], depth + 1)}, {_rust_type(args[1], depth + 1)}>"
    raise _TypeError(f"`{text}`")


# ---------------------------------------------------------------- the sample's entry points


def declared_entry_points(sample_entry: object) -> tuple[str, ...] | None:
    """The task's `entry_point` (a name or a list of names), or None when it declares none."""
    names = [sample_entry] if isinstance(sample_entry, str) else list(sample_entry) if isinstance(sample_entry, list | tuple) else []
    names = [str(n) for n in names if str(n)]
    bad = [n for n in names if not _IDENT.fullmatch(n) or n == "main"]
    if bad:
        raise Refused(f"entry_point `{bad[0]}` is not a function name")
    return tuple(names) or None


@dataclass(frozen=True)
class Entries:
    signatures: tuple[Signature, ...]
    library: tuple[str, ...]  # entry points that are also library names (C/C++: the tests call them under another name)
    prompt_head: str  # a prompt that declares an entry point is code: its text before the first entry point is the tests' too
    includes: tuple[str, ...]  # that head's standard headers (C/C++)


def entry_points(
    language: Language, solution: str, prompt: str, test: str, declared: tuple[str, ...] | None, library: frozenset[str]
) -> Entries:
    """The entry points and their signatures: declared (or, when none is, the names the tests call
    that the solution defines and neither a library nor the prompt does), with signatures from the
    prompt when it declares them, else from the solution. A function the prompt defines in full
    (HumanEval/32's `poly`) is the task's: the tests get the prompt's, never the solution's."""
    scanner = scan_rust if language == "rust" else scan_c
    own, task = scanner(solution), scanner(prompt) if prompt.strip() else Scan()
    helpers = {name for name, fns in task.functions.items() if any(fn.complete for fn in fns)}
    if declared is None:
        mine = own_functions(language, test) | helpers
        names = []
        for name in named(language, test):
            if name in mine or (name not in own.functions and name not in task.functions):
                continue
            if name in library:
                library_name = {"c": "a C library function", "cpp": "a C or C++ standard library function"}.get(
                    language, "a prelude function"
                )
                raise Refused(
                    f"the tests call `{name}`, {library_name} the solution defines too: if it is the function under test, "
                    "name it in the sample's entry_point"
                )
            names.append(name)
        if not names:
            raise Refused("the tests call no function the solution defines (name the function under test in the sample's entry_point)")
    else:
        names = list(declared)
    signatures: list[Signature] = []
    from_prompt: list[str] = []
    for name in names:
        found = None
        if name in task.functions:  # the task's declaration; one that is not code (words that look like one) is not used
            with contextlib.suppress(Refused):
                found = _signatures(language, name, Scan(functions=task.functions, aliases={**own.aliases, **task.aliases}))
                from_prompt.append(name)
        signatures.extend(found if found is not None else _signatures(language, name, Scan(functions=own.functions, aliases=own.aliases)))
    hidden = tuple(sorted({s.name for s in signatures if s.name in library}))
    starts = [fn.start for name in from_prompt for fn in task.functions[name]]
    if not starts:  # a prompt in words, or one that declares no entry point: not the tests' code
        return Entries(tuple(signatures), hidden, "", ())
    head = prompt[: min(starts)]
    return Entries(tuple(signatures), hidden, head, tuple(scanner(head).includes))


def _signatures(language: Language, name: str, scan: Scan) -> list[Signature]:
    return [rust_signature(name, scan)] if language == "rust" else c_signature(name, language, scan)


# ---------------------------------------------------------------- toolchains


@functools.cache
def rust_sysroot() -> str:
    rustc = shutil.which("rustc")
    if rustc is None:
        raise FileNotFoundError("rustc is not installed")
    return subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def rust_compiler() -> str:
    return str(Path(rust_sysroot()) / "bin" / "rustc")
