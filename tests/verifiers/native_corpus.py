"""C, C++ and Rust tasks with `test` statements: a reference solution and wrong variants of each.

Shared by `test_honest_native.py` (every variant must score what a reference harness gives it) and
`benchmarks/verifiers.py` (samples/s of the native verifiers). The tests use the types that cross
between the processes (numbers, bool, strings, arrays with their length, std containers, Vec,
Option, Result, tuples, maps) in the styles tests are written in: results in variables, in-place
changes, loops over tables, helper macros and lambdas, expected exceptions and panics. Each task
runs the same under the old in-process harness, so the benchmark can compare both.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    name: str
    language: str  # "c", "cpp", "rust"
    solution: str
    wrong: tuple[str, ...]
    test: str
    entry_point: str | list[str] | None = None
    prompt: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def samples(self) -> list[dict[str, object]]:
        base: dict[str, object] = {"test": self.test, "prompt": self.prompt}
        if self.entry_point is not None:
            base["entry_point"] = self.entry_point
        return [{**base, "completion": code} for code in (self.solution, *self.wrong)]


C_TASKS = [
    Task(
        "add",
        "c",
        "int add(int a, int b) { return a + b; }\n",
        ("int add(int a, int b) { return a - b; }\n", "int add(int a, int b) { return a > 0 ? a + b : b; }\n"),
        "CHECK(add(1, 2) == 3);\nCHECK(add(-1, 1) == 0);\nCHECK(add(100, 23) == 123);\nint r = add(2, 2);\nCHECK(r == 4);\n",
    ),
    Task(
        "sum_array",
        "c",
        "int sum(const int *xs, int n) { int s = 0; for (int i = 0; i < n; i++) s += xs[i]; return s; }\n",
        ("int sum(const int *xs, int n) { int s = 0; for (int i = 1; i < n; i++) s += xs[i]; return s; }\n",),
        "int a[] = {1, 2, 3, 4};\nCHECK(sum(a, 4) == 10);\nCHECK(sum(a, 0) == 0);\nint b[] = {5};\nCHECK(sum(b, 1) == 5);\n",
    ),
    Task(
        "reverse_in_place",
        "c",
        "#include <string.h>\nvoid reverse(char *s) { size_t n = strlen(s); for (size_t i = 0; i < n / 2; i++) "
        "{ char t = s[i]; s[i] = s[n - 1 - i]; s[n - 1 - i] = t; } }\n",
        ("#include <string.h>\nvoid reverse(char *s) { if (s[0]) s[0] = 'x'; }\n",),
        'char s[] = "hello";\nreverse(s);\nCHECK(strcmp(s, "olleh") == 0);\nchar e[] = "";\nreverse(e);\nCHECK(e[0] == 0);\n'
        "char p[] = \"ab\";\nreverse(p);\nCHECK(p[0] == 'b' && p[1] == 'a');\n",
    ),
    Task(
        "upper_copy",
        "c",
        "#include <stdlib.h>\n#include <string.h>\n#include <ctype.h>\nchar *upper(const char *s) { size_t n = strlen(s); "
        "char *r = malloc(n + 1); for (size_t i = 0; i <= n; i++) r[i] = (char)toupper((unsigned char)s[i]); return r; }\n",
        (
            "#include <stdlib.h>\n#include <string.h>\nchar *upper(const char *s) { char *r = malloc(strlen(s) + 1); strcpy(r, s); return r; }\n",
        ),
        'CHECK(strcmp(upper("abc"), "ABC") == 0);\nCHECK(strcmp(upper("A1b"), "A1B") == 0);\nCHECK(strcmp(upper(""), "") == 0);\n',
    ),
    Task(
        "is_prime",
        "c",
        "#include <stdbool.h>\nbool is_prime(long n) { if (n < 2) return false; for (long d = 2; d * d <= n; d++) if (n % d == 0) return false; return true; }\n",
        (
            "#include <stdbool.h>\nbool is_prime(long n) { if (n < 2) return false; for (long d = 2; d < n / 2; d++) if (n % d == 0) return false; return true; }\n",
            "#include <stdbool.h>\nbool is_prime(long n) { return n % 2 == 1; }\n",
        ),
        "int primes[] = {2, 3, 5, 7, 11, 13};\nfor (int i = 0; i < 6; i++) CHECK(is_prime(primes[i]));\nCHECK(!is_prime(1));\nCHECK(!is_prime(4));\n"
        "CHECK(!is_prime(9));\nCHECK(!is_prime(91));\n",
    ),
    Task(
        "sort_in_place",
        "c",
        "void sort(int *a, int n) { for (int i = 0; i < n; i++) for (int j = i + 1; j < n; j++) if (a[j] < a[i]) { int t = a[i]; a[i] = a[j]; a[j] = t; } }\n",
        (
            "void sort(int *a, int n) { for (int i = 0; i + 1 < n; i++) if (a[i + 1] < a[i]) { int t = a[i]; a[i] = a[i + 1]; a[i + 1] = t; } }\n",
        ),
        "#define SORTED(a, n) ({ int ok_ = 1; for (int i_ = 1; i_ < (n); i_++) ok_ = ok_ && (a)[i_ - 1] <= (a)[i_]; ok_; })\n"
        "int a[] = {3, 1, 2};\nsort(a, 3);\nCHECK(SORTED(a, 3));\nint b[] = {5, 4, 3, 2, 1};\nsort(b, 5);\nCHECK(SORTED(b, 5) && b[0] == 1);\n",
        entry_point="sort",
    ),
    Task(
        "evens_leetcode",
        "c",
        "#include <stdlib.h>\nint *evens(int n, int *returnSize) { int *r = malloc(sizeof(int) * (n + 1)); int k = 0; "
        "for (int i = 0; i < n; i += 2) r[k++] = i; *returnSize = k; return r; }\n",
        (
            "#include <stdlib.h>\nint *evens(int n, int *returnSize) { int *r = malloc(sizeof(int) * (n + 1)); int k = 0; "
            "for (int i = 0; i <= n; i += 2) r[k++] = i; *returnSize = k; return r; }\n",
        ),
        "int size = -1;\nint *e = evens(7, &size);\nCHECK(size == 4);\nCHECK(e[0] == 0 && e[3] == 6);\nevens(0, &size);\nCHECK(size == 0);\n",
    ),
    Task(
        "mean",
        "c",
        "#include <stddef.h>\ndouble mean(const double *xs, size_t n) { double s = 0; for (size_t i = 0; i < n; i++) s += xs[i]; return n ? s / n : 0.0; }\n",
        (
            "#include <stddef.h>\ndouble mean(const double *xs, size_t n) { double s = 0; for (size_t i = 0; i < n; i++) s += xs[i]; return s / (n + 1); }\n",
        ),
        "double d[] = {1.0, 2.0, 4.5};\nCHECK(fabs(mean(d, 3) - 2.5) < 1e-9);\nCHECK(mean(d, 0) == 0.0);\n",
    ),
    Task(
        "swap",
        "c",
        "void swap(int *a, int *b) { int t = *a; *a = *b; *b = t; }\n",
        ("void swap(int *a, int *b) { *a = *b; }\n",),
        "int x = 1, y = 2;\nswap(&x, &y);\nCHECK(x == 2);\nCHECK(y == 1);\n",
    ),
    Task(
        "count_vowels",
        "c",
        '#include <string.h>\nint count_vowels(const char *s) { int n = 0; for (; *s; s++) n += strchr("aeiouAEIOU", *s) != 0; return n; }\n',
        ('#include <string.h>\nint count_vowels(const char *s) { int n = 0; for (; *s; s++) n += strchr("aeiou", *s) != 0; return n; }\n',),
        'CHECK(count_vowels("hello") == 2);\nCHECK(count_vowels("AEIOU") == 5);\nCHECK(count_vowels("") == 0);\nCHECK(count_vowels("xyz") == 0);\n',
    ),
]

CPP_TASKS = [
    Task(
        "evens",
        "cpp",
        "#include <vector>\nstd::vector<int> evens(int n) { std::vector<int> v; for (int i = 0; i < n; i += 2) v.push_back(i); return v; }\n",
        (
            "#include <vector>\nstd::vector<int> evens(int n) { std::vector<int> v; for (int i = 0; i <= n; i += 2) v.push_back(i); return v; }\n",
        ),
        "CHECK(evens(5) == std::vector<int>({0, 2, 4}));\nCHECK(evens(0).empty());\nCHECK(evens(2).size() == 1);\n",
    ),
    Task(
        "word_counts",
        "cpp",
        "#include <map>\n#include <sstream>\n#include <string>\nusing namespace std;\n"
        "map<string, int> counts(const string &s) { map<string, int> m; stringstream in(s); string w; while (in >> w) m[w]++; return m; }\n",
        (
            "#include <map>\n#include <string>\nusing namespace std;\nmap<string, int> counts(const string &s) { map<string, int> m; m[s] = 1; return m; }\n",
        ),
        'auto m = counts("a b a");\nCHECK(m["a"] == 2);\nCHECK(m["b"] == 1);\nCHECK(counts("").empty());\n',
    ),
    Task(
        "sort_pairs",
        "cpp",
        "#include <algorithm>\n#include <string>\n#include <vector>\nvoid sort_pairs(std::vector<std::pair<int, std::string>> &v) { std::sort(v.begin(), v.end()); }\n",
        (
            "#include <algorithm>\n#include <string>\n#include <vector>\nvoid sort_pairs(std::vector<std::pair<int, std::string>> &v) { std::reverse(v.begin(), v.end()); }\n",
        ),
        'std::vector<std::pair<int, std::string>> v = {{2, "b"}, {1, "a"}, {3, "c"}};\nsort_pairs(v);\n'
        'CHECK(v[0].first == 1 && v[0].second == "a");\nCHECK(v[2].first == 3);\nCHECK(std::is_sorted(v.begin(), v.end()));\n',
    ),
    Task(
        "first_negative",
        "cpp",
        "#include <optional>\n#include <vector>\nstd::optional<int> first_negative(const std::vector<int> &v) { for (int x : v) if (x < 0) return x; return std::nullopt; }\n",
        (
            "#include <optional>\n#include <vector>\nstd::optional<int> first_negative(const std::vector<int> &v) { for (int x : v) if (x <= 0) return x; return std::nullopt; }\n",
        ),
        "CHECK(!first_negative({1, 2}).has_value());\nCHECK(first_negative({1, -2, -3}).value() == -2);\nCHECK(first_negative({0, -1}) == -1);\n",
    ),
    Task(
        "safe_div",
        "cpp",
        '#include <stdexcept>\nint safe_div(int a, int b) { if (b == 0) throw std::invalid_argument("division by zero"); return a / b; }\n',
        ("int safe_div(int a, int b) { return b == 0 ? 0 : a / b; }\n",),
        "CHECK(safe_div(6, 3) == 2);\nbool threw = false;\ntry { safe_div(1, 0); } catch (const std::invalid_argument &) { threw = true; }\nCHECK(threw);\n"
        "CHECK(safe_div(-9, 3) == -3);\n",
    ),
    Task(
        "transpose",
        "cpp",
        "#include <vector>\nusing namespace std;\nvector<vector<int>> transpose(const vector<vector<int>> &m) { if (m.empty()) return {}; "
        "vector<vector<int>> t(m[0].size(), vector<int>(m.size())); for (size_t i = 0; i < m.size(); i++) for (size_t j = 0; j < m[0].size(); j++) "
        "t[j][i] = m[i][j]; return t; }\n",
        ("#include <vector>\nusing namespace std;\nvector<vector<int>> transpose(const vector<vector<int>> &m) { return m; }\n",),
        "using M = std::vector<std::vector<int>>;\nCHECK(transpose(M{{1, 2}, {3, 4}}) == M({{1, 3}, {2, 4}}));\nCHECK(transpose(M{}).empty());\n"
        "CHECK(transpose(M{{1, 2, 3}}).size() == 3);\n",
    ),
    Task(
        "palindrome",
        "cpp",
        "#include <string>\nbool is_palindrome(const std::string &s) { return std::string(s.rbegin(), s.rend()) == s; }\n",
        ("#include <string>\nbool is_palindrome(const std::string &s) { return !s.empty() && s.front() == s.back(); }\n",),
        'for (auto w : {"", "a", "aba", "abba"}) CHECK(is_palindrome(w));\nCHECK(!is_palindrome("ab"));\nCHECK(!is_palindrome("abca"));\n',
    ),
    Task(
        "min_max_sum",
        "cpp",
        "#include <algorithm>\n#include <numeric>\n#include <tuple>\n#include <vector>\n"
        "std::tuple<int, int, long long> stats(const std::vector<int> &v) { return {*std::min_element(v.begin(), v.end()), "
        "*std::max_element(v.begin(), v.end()), std::accumulate(v.begin(), v.end(), 0LL)}; }\n",
        (
            "#include <tuple>\n#include <vector>\nstd::tuple<int, int, long long> stats(const std::vector<int> &v) { return {v.front(), v.back(), 0}; }\n",
        ),
        "auto [lo, hi, total] = stats({3, 1, 4, 1, 5});\nCHECK(lo == 1);\nCHECK(hi == 5);\nCHECK(total == 14);\n",
    ),
    Task(
        "dedupe",
        "cpp",
        "#include <set>\n#include <vector>\nstd::set<int> dedupe(const std::vector<int> &v) { return std::set<int>(v.begin(), v.end()); }\n",
        (
            "#include <set>\n#include <vector>\nstd::set<int> dedupe(const std::vector<int> &v) { std::set<int> s; if (!v.empty()) s.insert(v[0]); return s; }\n",
        ),
        "CHECK(dedupe({3, 1, 3}) == std::set<int>({1, 3}));\nCHECK(dedupe({}).empty());\n",
    ),
]

RUST_TASKS = [
    Task(
        "add",
        "rust",
        "fn add(a: i32, b: i32) -> i32 { a + b }\n",
        ("fn add(a: i32, b: i32) -> i32 { a * b }\n",),
        "check!(add(1, 2) == 3);\ncheck!(add(2, 2) == 4);\nlet r = add(-5, 5);\ncheck!(r == 0);\n",
    ),
    Task(
        "longest",
        "rust",
        "fn longest<'a>(a: &'a str, b: &'a str) -> &'a str { if b.len() > a.len() { b } else { a } }\n",
        ("fn longest<'a>(a: &'a str, b: &'a str) -> &'a str { a }\n",),
        'check!(longest("ab", "abc") == "abc");\ncheck!(longest("xyz", "a") == "xyz");\ncheck!(longest("", "") == "");\n',
    ),
    Task(
        "char_counts",
        "rust",
        "use std::collections::HashMap;\nfn counts(s: &str) -> HashMap<char, usize> { let mut m = HashMap::new(); "
        "for c in s.chars() { *m.entry(c).or_insert(0) += 1; } m }\n",
        ("use std::collections::HashMap;\nfn counts(s: &str) -> HashMap<char, usize> { s.chars().map(|c| (c, 1)).collect() }\n",),
        "let m = counts(\"aab\");\ncheck!(m[&'a'] == 2);\ncheck!(m[&'b'] == 1);\ncheck!(counts(\"\").is_empty());\n",
    ),
    Task(
        "sort_in_place",
        "rust",
        "fn sort_desc(v: &mut Vec<i64>) { v.sort_by(|a, b| b.cmp(a)); }\n",
        ("fn sort_desc(v: &mut Vec<i64>) { v.sort(); }\n",),
        "let mut v = vec![3, 1, 2];\nsort_desc(&mut v);\ncheck!(v == vec![3, 2, 1]);\nlet mut e: Vec<i64> = vec![];\nsort_desc(&mut e);\ncheck!(e.is_empty());\n",
    ),
    Task(
        "double_slice",
        "rust",
        "fn double_all(v: &mut [i32]) { for x in v.iter_mut() { *x *= 2; } }\n",
        ("fn double_all(v: &mut [i32]) { if let Some(x) = v.first_mut() { *x *= 2; } }\n",),
        "let mut w = [1, 2, 3];\ndouble_all(&mut w);\ncheck!(w == [2, 4, 6]);\nlet mut one = vec![5];\ndouble_all(&mut one);\ncheck!(one[0] == 10);\n",
    ),
    Task(
        "parse",
        "rust",
        "fn parse(s: &str) -> Result<i32, String> { s.trim().parse::<i32>().map_err(|e| e.to_string()) }\n",
        ('fn parse(s: &str) -> Result<i32, String> { s.parse::<i32>().map_err(|_| "bad".to_string()) }\n',),
        'check!(parse("12") == Ok(12));\ncheck!(parse(" 7 ") == Ok(7));\ncheck!(parse("x").is_err());\n',
    ),
    Task(
        "fib",
        "rust",
        "fn fib(n: u64) -> u64 { let (mut a, mut b) = (0u64, 1u64); for _ in 0..n { let t = a + b; a = b; b = t; } a }\n",
        ("fn fib(n: u64) -> u64 { if n < 2 { n } else { n * 2 - 1 } }\n",),
        "for (n, f) in [(0u64, 0u64), (1, 1), (2, 1), (10, 55)] { check!(fib(n) == f); }\ncheck!(fib(50) == 12586269025);\n",
    ),
    Task(
        "median",
        "rust",
        "fn median(v: &[f64]) -> Option<f64> { if v.is_empty() { return None; } let mut s = v.to_vec(); s.sort_by(|a, b| a.partial_cmp(b).unwrap()); "
        "let n = s.len(); Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }) }\n",
        ("fn median(v: &[f64]) -> Option<f64> { v.get(v.len() / 2).copied() }\n",),
        "check!(median(&[3.0, 1.0, 2.0]) == Some(2.0));\ncheck!(median(&[1.0, 2.0, 3.0, 4.0]) == Some(2.5));\ncheck!(median(&[]).is_none());\n",
    ),
    Task(
        "checked_root",
        "rust",
        'fn root(x: i64) -> i64 { if x < 0 { panic!("negative") } (x as f64).sqrt() as i64 }\n',
        ("fn root(x: i64) -> i64 { (x.abs() as f64).sqrt() as i64 }\n",),
        "check!(root(16) == 4);\ncheck!(std::panic::catch_unwind(|| root(-1)).is_err());\ncheck!(root(0) == 0);\n",
    ),
    Task(
        "pairs",
        "rust",
        "fn pairs(n: usize) -> Vec<(usize, String)> { (0..n).map(|i| (i, i.to_string())).collect() }\n",
        ("fn pairs(n: usize) -> Vec<(usize, String)> { (1..=n).map(|i| (i, i.to_string())).collect() }\n",),
        'check!(pairs(2) == vec![(0, "0".to_string()), (1, "1".to_string())]);\ncheck!(pairs(0).is_empty());\n',
    ),
]

TASKS = {"c": C_TASKS, "cpp": CPP_TASKS, "rust": RUST_TASKS}
