"""The bank of parameterised Python-function tasks behind :class:`PyFuncWorld`.

Every template draws parameters from an RNG and returns a task: a function name and signature,
a one-sentence specification, a trusted reference implementation (source text; it is executed
in-process, by us, only to compute the expected outputs of deterministic test inputs) and input
generators (edge cases + random). Difficulty 1 = one-liner, 2 = a short loop, 3 = a loop with a
corner case.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import string
from dataclasses import dataclass
from typing import Any, Callable

from opsd_platform.errors import WorldError
from opsd_platform.worlds.base import Problem

DIFFICULTIES = (1, 2, 3)
N_TESTS = 5
_MAX_DRAWS = 100_000


@dataclass(frozen=True)
class Task:
    template: str
    difficulty: int
    params: dict[str, Any]
    func_name: str
    args: str  # "nums, k"
    description: str  # completes "Write a Python function `f(args)` that ..."
    reference: str  # source of the reference implementation
    edge: tuple[tuple[Any, ...], ...]  # corner-case inputs
    gen: Callable[[random.Random], tuple[Any, ...]]  # a random input

    @property
    def key(self) -> str:
        return self.template + json.dumps(self.params, sort_keys=True)


_TEMPLATES: list[tuple[str, int, Callable[[random.Random, str], Task]]] = []


def template(difficulty: int):
    def register(fn):
        name = fn.__name__.lstrip("_")
        _TEMPLATES.append((name, difficulty, fn))
        return fn

    return register


def templates(difficulty: int | None = None) -> list[str]:
    return [n for n, d, _ in _TEMPLATES if difficulty is None or d == difficulty]


# ---- input helpers --------------------------------------------------------------------------

def _ints(rng: random.Random, lo: int = -20, hi: int = 20, n_lo: int = 1, n_hi: int = 10) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(n_lo, n_hi))]


_WORDS = ("apple banana cherry dog eagle fig grape house ice jam kite lemon moon nut owl pear "
          "queen rose sun tree umbrella violet wolf xray yak zebra a an to be sky code data")
_WORDLIST = _WORDS.split()


def _words(rng: random.Random, n_lo: int = 1, n_hi: int = 8) -> list[str]:
    return [rng.choice(_WORDLIST) for _ in range(rng.randint(n_lo, n_hi))]


def _text(rng: random.Random, alphabet: str, n_lo: int = 1, n_hi: int = 16) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(n_lo, n_hi)))


# ---- difficulty 1 ---------------------------------------------------------------------------

@template(1)
def _sum_multiples(rng, name):
    k = rng.randint(2, 9)
    return Task(name, 1, {"k": k}, "sum_multiples", "nums",
                f"returns the sum of the elements of the list `nums` that are divisible by {k} (0 if there are none)",
                f"def sum_multiples(nums):\n    return sum(x for x in nums if x % {k} == 0)\n",
                (([],), ([k, 1],)), lambda r: (_ints(r, -30, 30),))


@template(1)
def _count_char(rng, name):
    c = rng.choice(string.ascii_lowercase)
    ic = rng.random() < 0.5
    desc = f"returns how many times the letter {c!r} occurs in the string `s`"
    if ic:
        desc += f", ignoring case (so {c.upper()!r} counts too)"
        ref = f"def count_char(s):\n    return s.lower().count({c!r})\n"
    else:
        desc += f" (case-sensitive: {c.upper()!r} does not count)"
        ref = f"def count_char(s):\n    return s.count({c!r})\n"
    alpha = c + c.upper() + "xyzXY "
    return Task(name, 1, {"c": c, "ignore_case": ic}, "count_char", "s", desc, ref,
                (("",), (c.upper() * 2 + c,)), lambda r: (_text(r, alpha),))


@template(1)
def _scale_shift(rng, name):
    m, a = rng.randint(2, 5), rng.choice([-3, -2, -1, 1, 2, 3])
    return Task(name, 1, {"m": m, "a": a}, "scale_shift", "nums",
                f"returns a new list in which each element x of `nums` is replaced by x * {m} + ({a})",
                f"def scale_shift(nums):\n    return [x * {m} + ({a}) for x in nums]\n",
                (([],),), lambda r: (_ints(r),))


@template(1)
def _clamp_each(rng, name):
    lo, hi = rng.randint(-5, 0), rng.randint(5, 10)
    return Task(name, 1, {"lo": lo, "hi": hi}, "clamp_each", "nums",
                f"returns a new list in which every element of `nums` is clamped to the range [{lo}, {hi}] "
                f"(values below {lo} become {lo}, values above {hi} become {hi})",
                f"def clamp_each(nums):\n    return [min(max(x, {lo}), {hi}) for x in nums]\n",
                (([],), ([lo - 1, hi + 1, lo, hi],)), lambda r: (_ints(r),))


@template(1)
def _count_longer(rng, name):
    n = rng.randint(2, 7)
    return Task(name, 1, {"n": n}, "count_longer", "words",
                f"returns how many strings in the list `words` are longer than {n} characters",
                f"def count_longer(words):\n    return sum(1 for w in words if len(w) > {n})\n",
                (([],),), lambda r: (_words(r),))


@template(1)
def _sum_last_k(rng, name):
    k = rng.randint(1, 6)
    return Task(name, 1, {"k": k}, "sum_last", "nums",
                f"returns the sum of the last {k} elements of the list `nums` "
                f"(the sum of all elements if it has fewer than {k})",
                f"def sum_last(nums):\n    return sum(nums[-{k}:])\n",
                (([],), ([5],)), lambda r: (_ints(r),))


@template(1)
def _count_starting(rng, name):
    c = rng.choice("abcdefghiklmnoprstuvwyz")
    return Task(name, 1, {"c": c}, "count_starting_with", "words",
                f"returns how many strings in the list `words` start with the lowercase letter {c!r}",
                f"def count_starting_with(words):\n    return sum(1 for w in words if w.startswith({c!r}))\n",
                (([],), (["", c, c.upper()],)), lambda r: (_words(r, 2, 10),))


@template(1)
def _replace_char(rng, name):
    a, b = rng.sample(string.ascii_lowercase, 2)
    return Task(name, 1, {"a": a, "b": b}, "replace_char", "s",
                f"returns the string `s` with every {a!r} replaced by {b!r} (other characters unchanged)",
                f"def replace_char(s):\n    return s.replace({a!r}, {b!r})\n",
                (("",),), lambda r: (_text(r, a * 3 + b + "xyz "),))


@template(1)
def _power_sum(rng, name):
    p = rng.randint(1, 4)
    return Task(name, 1, {"p": p}, "power_sum", "n",
                f"returns the sum of i**{p} for i from 1 to `n` inclusive (0 when n < 1)",
                f"def power_sum(n):\n    return sum(i ** {p} for i in range(1, n + 1))\n",
                ((0,), (-3,), (1,)), lambda r: (r.randint(2, 40),))


@template(1)
def _spread(rng, name):
    d = rng.choice([0, -1])
    return Task(name, 1, {"default": d}, "spread", "nums",
                f"returns the largest element of the list `nums` minus its smallest element, or {d} if `nums` is empty",
                f"def spread(nums):\n    return max(nums) - min(nums) if nums else {d}\n",
                (([],), ([7],)), lambda r: (_ints(r),))


# ---- difficulty 2 ---------------------------------------------------------------------------

@template(2)
def _reverse_words(rng, name):
    sep = rng.choice([" ", "-", ",", "_", "|"])
    cap = rng.random() < 0.5
    desc = f"splits the string `s` on whitespace, reverses the order of the words and returns them joined with {sep!r}"
    body = "words = s.split()[::-1]\n"
    if cap:
        desc += ", each word capitalized (first letter upper case, the rest lower case)"
        body += "    words = [w.capitalize() for w in words]\n"
    ref = f"def reverse_words(s):\n    {body}    return {sep!r}.join(words)\n"
    return Task(name, 2, {"sep": sep, "cap": cap}, "reverse_words", "s", desc, ref,
                (("",), ("  one  ",)), lambda r: (" ".join(_words(r)),))


@template(2)
def _running(rng, name):
    op = rng.choice(["max", "min", "sum", "product"])
    init = {"max": "None", "min": "None", "sum": "0", "product": "1"}[op]
    step = {"max": "x if acc is None or x > acc else acc", "min": "x if acc is None or x < acc else acc",
            "sum": "acc + x", "product": "acc * x"}[op]
    ref = (f"def running_{op}(nums):\n    out, acc = [], {init}\n    for x in nums:\n"
           f"        acc = {step}\n        out.append(acc)\n    return out\n")
    return Task(name, 2, {"op": op}, f"running_{op}", "nums",
                f"returns the list whose i-th element is the {op} of nums[0..i] (the running {op}); an empty list gives []",
                ref, (([],), ([3],)), lambda r: (_ints(r, -5, 5) if op == "product" else _ints(r),))


@template(2)
def _dedupe(rng, name):
    keep = rng.choice(["first", "last"])
    ic = rng.random() < 0.5
    desc = f"removes duplicates from the list of strings `items`, keeping only the {keep} occurrence of each value"
    key = "x.lower()" if ic else "x"
    if ic:
        desc += " (strings equal ignoring case are duplicates; the kept string is returned unchanged)"
    desc += ", and returns the remaining strings in their original order"
    if keep == "first":
        ref = (f"def dedupe(items):\n    seen, out = set(), []\n    for x in items:\n        k = {key}\n"
               "        if k not in seen:\n            seen.add(k)\n            out.append(x)\n    return out\n")
    else:
        ref = (f"def dedupe(items):\n    seen, out = set(), []\n    for x in reversed(items):\n        k = {key}\n"
               "        if k not in seen:\n            seen.add(k)\n            out.append(x)\n    return out[::-1]\n")
    pool = ["a", "A", "b", "B", "cat", "Cat", "dog"]
    return Task(name, 2, {"keep": keep, "ignore_case": ic}, "dedupe", "items", desc, ref,
                (([],), (["x"],)), lambda r: ([r.choice(pool) for _ in range(r.randint(2, 9))],))


@template(2)
def _fizzbuzz(rng, name):
    a = rng.randint(2, 7)
    b = rng.choice([x for x in range(3, 12) if x > a and x % a])
    w1, w2 = rng.choice([("Fizz", "Buzz"), ("Foo", "Bar"), ("Ping", "Pong"), ("Tic", "Tac")])
    ref = (f"def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n        s = ''\n"
           f"        if i % {a} == 0:\n            s += {w1!r}\n        if i % {b} == 0:\n            s += {w2!r}\n"
           "        out.append(s or str(i))\n    return out\n")
    return Task(name, 2, {"a": a, "b": b, "w1": w1, "w2": w2}, "fizzbuzz", "n",
                f"returns a list of strings for the numbers 1..n: {w1!r} for multiples of {a}, {w2!r} for "
                f"multiples of {b}, {w1 + w2!r} for multiples of both, and the number itself (as a string) otherwise",
                ref, ((0,), (1,), (a * b,)), lambda r: (r.randint(2, 30),))


@template(2)
def _rotate(rng, name):
    k = rng.randint(1, 6)
    d = rng.choice(["left", "right"])
    shift = f"{k} % len(nums)" if d == "left" else f"-({k} % len(nums))"
    ref = (f"def rotate(nums):\n    if not nums:\n        return []\n    k = {shift}\n"
           "    return nums[k:] + nums[:k]\n")
    return Task(name, 2, {"k": k, "dir": d}, "rotate", "nums",
                f"returns the list `nums` rotated {d} by {k} positions (rotating by more than the length wraps around; [] stays [])",
                ref, (([],), ([1],), (list(range(k)),)), lambda r: (_ints(r, 0, 9),))


@template(2)
def _chunk_sums(rng, name):
    k = rng.randint(2, 5)
    ref = (f"def chunk_sums(nums):\n    out = []\n    for i in range(0, len(nums), {k}):\n"
           f"        out.append(sum(nums[i:i + {k}]))\n    return out\n")
    return Task(name, 2, {"k": k}, "chunk_sums", "nums",
                f"splits the list `nums` into consecutive chunks of {k} elements (the last chunk may be shorter) and returns the list of the chunk sums",
                ref, (([],), ([4],)), lambda r: (_ints(r, -9, 9, 1, 13),))


@template(2)
def _digit_sum_filter(rng, name):
    m = rng.randint(2, 5)
    ref = (f"def digit_sum_filter(nums):\n    out = []\n    for x in nums:\n        s = 0\n        for ch in str(abs(x)):\n"
           f"            s += int(ch)\n        if s % {m} == 0:\n            out.append(x)\n    return out\n")
    return Task(name, 2, {"m": m}, "digit_sum_filter", "nums",
                f"returns, in order, the elements of `nums` whose digit sum (of the absolute value) is divisible by {m}",
                ref, (([],), ([0, -11],)), lambda r: (_ints(r, -500, 500),))


@template(2)
def _count_letters(rng, name):
    what = rng.choice(["vowels", "consonants"])
    y = rng.random() < 0.5
    vowels = "aeiouy" if y else "aeiou"
    note = "'y' counts as a vowel" if y else "'y' is a consonant"
    cond = "c in V" if what == "vowels" else "c.isalpha() and c not in V"
    ref = f"def count_{what}(s):\n    V = {vowels!r}\n    return sum(1 for c in s.lower() if {cond})\n"
    return Task(name, 2, {"what": what, "y": y}, f"count_{what}", "s",
                f"returns the number of {what} in the string `s`, ignoring case ({note}; non-letters are neither)",
                ref, (("",), ("Yy1!",)), lambda r: (_text(r, "abcdeiouyAEYZ 1,", 0, 20),))


@template(2)
def _pair_diffs(rng, name):
    step = rng.randint(1, 3)
    ab = rng.random() < 0.5
    expr = f"abs(nums[i + {step}] - nums[i])" if ab else f"nums[i + {step}] - nums[i]"
    ref = f"def pair_diffs(nums):\n    return [{expr} for i in range(len(nums) - {step})]\n"
    what = f"|nums[i+{step}] - nums[i]|" if ab else f"nums[i+{step}] - nums[i]"
    return Task(name, 2, {"step": step, "abs": ab}, "pair_diffs", "nums",
                f"returns the list of {what} for every i where both indices are valid (an empty list if there are none)",
                ref, (([],), ([1] * step,)), lambda r: (_ints(r, -9, 9, 1, 10),))


@template(2)
def _is_palindrome(rng, name):
    mode = rng.choice(["alnum", "spaces", "case"])
    clean = {"alnum": "[c for c in s.lower() if c.isalnum()]", "spaces": "[c for c in s.lower() if c != ' ']",
             "case": "list(s.lower())"}[mode]
    what = {"alnum": "ignoring case and every non-alphanumeric character",
            "spaces": "ignoring case and spaces (but not other punctuation)", "case": "ignoring case only"}[mode]
    ref = f"def is_palindrome(s):\n    t = {clean}\n    return t == t[::-1]\n"

    def gen(r):
        half = _text(r, "abcAB ,!", 1, 6)
        mid = r.choice(["", "x", " "])
        s = half + mid + half[::-1]
        return (s.swapcase() if r.random() < 0.3 else s if r.random() < 0.6 else s + "q",)

    return Task(name, 2, {"mode": mode}, "is_palindrome", "s",
                f"returns True if the string `s` reads the same forwards and backwards, {what}, else False",
                ref, (("",), ("A man, a plan, a canal: Panama",), ("ab",)), gen)


# ---- difficulty 3 ---------------------------------------------------------------------------

@template(3)
def _rle(rng, name):
    fmt = rng.choice(["after", "before", "omit1"])
    piece = {"after": "ch + str(n)", "before": "str(n) + ch", "omit1": "ch + (str(n) if n > 1 else '')"}[fmt]
    ex = {"after": "'aaab' -> 'a3b1'", "before": "'aaab' -> '3a1b'", "omit1": "'aaab' -> 'a3b'"}[fmt]
    ref = ("def rle(s):\n    out = []\n    i = 0\n    while i < len(s):\n        ch, n = s[i], 1\n"
           "        while i + n < len(s) and s[i + n] == ch:\n            n += 1\n"
           f"        out.append({piece})\n        i += n\n    return ''.join(out)\n")
    return Task(name, 3, {"fmt": fmt}, "rle", "s",
                f"returns the run-length encoding of the string `s` ({ex}; the empty string gives '')",
                ref, (("",), ("z",), ("aabbbaa",)), lambda r: (_text(r, "aab", 1, 14),))


@template(3)
def _kth_largest(rng, name):
    k = rng.randint(2, 5)
    distinct = rng.random() < 0.5
    vals = "sorted(set(nums), reverse=True)" if distinct else "sorted(nums, reverse=True)"
    ref = f"def kth_largest(nums):\n    vals = {vals}\n    return vals[{k - 1}] if len(vals) >= {k} else None\n"
    what = "distinct value" if distinct else "element (duplicates count separately)"
    return Task(name, 3, {"k": k, "distinct": distinct}, "kth_largest", "nums",
                f"returns the {k}-th largest {what} of the list `nums`, or None if there is no such value",
                ref, (([],), ([4] * k,), (list(range(k)),)), lambda r: (_ints(r, -5, 5, 1, 9),))


@template(3)
def _longest_run(rng, name):
    kind = rng.choice(["equal", "increasing", "decreasing", "nondecreasing"])
    cond = {"equal": "nums[i] == nums[i - 1]", "increasing": "nums[i] > nums[i - 1]",
            "decreasing": "nums[i] < nums[i - 1]", "nondecreasing": "nums[i] >= nums[i - 1]"}[kind]
    what = {"equal": "equal elements", "increasing": "strictly increasing elements",
            "decreasing": "strictly decreasing elements", "nondecreasing": "non-decreasing elements"}[kind]
    ref = ("def longest_run(nums):\n    if not nums:\n        return 0\n    best = cur = 1\n"
           f"    for i in range(1, len(nums)):\n        cur = cur + 1 if {cond} else 1\n"
           "        best = max(best, cur)\n    return best\n")
    return Task(name, 3, {"kind": kind}, "longest_run", "nums",
                f"returns the length of the longest run of consecutive {what} in the list `nums` (0 for an empty list)",
                ref, (([],), ([2],), ([1, 1, 2, 2, 3],)), lambda r: (_ints(r, 0, 4, 1, 12),))


@template(3)
def _merge_intervals(rng, name):
    touch = rng.random() < 0.5
    op = "<=" if touch else "<"
    what = "overlapping or touching (like [1, 2] and [2, 3])" if touch else "overlapping (sharing more than an endpoint; [1, 2] and [2, 3] stay separate)"
    ref = ("def merge_intervals(intervals):\n    out = []\n    for a, b in sorted(intervals):\n"
           f"        if out and a {op} out[-1][1]:\n            out[-1][1] = max(out[-1][1], b)\n"
           "        else:\n            out.append([a, b])\n    return out\n")

    def gen(r):
        out = []
        for _ in range(r.randint(1, 6)):
            a = r.randint(0, 15)
            out.append([a, a + r.randint(0, 4)])
        return (out,)

    return Task(name, 3, {"touch": touch}, "merge_intervals", "intervals",
                f"takes a list of [start, end] pairs (start <= end), merges the intervals that are {what}, "
                "and returns the merged intervals as [start, end] lists sorted by start",
                ref, (([],), ([[1, 2], [2, 3]],)), gen)


@template(3)
def _window_sum(rng, name):
    k = rng.randint(2, 8)
    op = rng.choice(["max", "min"])
    ref = (f"def window_sum(nums):\n    if len(nums) < {k}:\n        return None\n    cur = sum(nums[:{k}])\n"
           f"    best = cur\n    for i in range({k}, len(nums)):\n        cur += nums[i] - nums[i - {k}]\n"
           f"        best = {op}(best, cur)\n    return best\n")
    return Task(name, 3, {"k": k, "op": op}, "window_sum", "nums",
                f"returns the {'largest' if op == 'max' else 'smallest'} sum of {k} consecutive elements of the list `nums`, "
                f"or None if it has fewer than {k} elements",
                ref, (([],), (list(range(k - 1)),), (list(range(k)),)), lambda r: (_ints(r, -9, 9, k - 1, k + 8),))


_BRACKETS = ["()", "[]", "{}"]


@template(3)
def _balanced(rng, name):
    pairs = [p for p in _BRACKETS if rng.random() < 0.6] or [rng.choice(_BRACKETS)]
    pairs_s = "".join(pairs)
    ref = (f"def balanced(s):\n    pairs = {{b: a for a, b in zip({pairs_s[0::2]!r}, {pairs_s[1::2]!r})}}\n"
           "    stack = []\n    for c in s:\n        if c in pairs.values():\n            stack.append(c)\n"
           "        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n                return False\n"
           "    return not stack\n")
    kinds = ", ".join(f"'{p}'" for p in pairs)
    alpha = pairs_s + "x"

    def gen(r):
        s = _text(r, alpha, 0, 12)
        if r.random() < 0.5:  # make a balanced one more likely
            p = r.choice(pairs)
            s = p[0] + "".join(q for q in pairs for _ in range(r.randint(0, 1))) + p[1]
        return (s,)

    return Task(name, 3, {"pairs": pairs_s}, "balanced", "s",
                f"returns True if the brackets {kinds} in the string `s` are balanced and properly nested "
                "(other characters are ignored), else False",
                ref, (("",), (pairs[0][1] + pairs[0][0],), (pairs[0][0],)), gen)


@template(3)
def _caesar(rng, name):
    k = rng.randint(1, 25)
    d = rng.choice(["forward", "backward"])
    sk = k if d == "forward" else -k
    ref = ("def caesar(s):\n    out = []\n    for c in s:\n        if c.islower():\n"
           f"            out.append(chr((ord(c) - 97 + ({sk})) % 26 + 97))\n        elif c.isupper():\n"
           f"            out.append(chr((ord(c) - 65 + ({sk})) % 26 + 65))\n        else:\n            out.append(c)\n"
           "    return ''.join(out)\n")
    return Task(name, 3, {"k": k, "dir": d}, "caesar", "s",
                f"shifts every ASCII letter of `s` {k} positions {d} in the alphabet, wrapping around (z/Z and a/A) "
                "and keeping the case; other characters are unchanged",
                ref, (("",), ("Zz Aa!",)), lambda r: (_text(r, "abxyzABXYZ .,", 1, 14),))


@template(3)
def _to_base(rng, name):
    b = rng.choice([x for x in range(2, 17) if x != 10])
    upper = b > 10 and rng.random() < 0.5
    digits = (string.digits + (string.ascii_uppercase if upper else string.ascii_lowercase))[:b]
    ref = (f"def to_base(n):\n    if n == 0:\n        return '0'\n    digits = {digits!r}\n    sign = '-' if n < 0 else ''\n"
           f"    n = abs(n)\n    out = ''\n    while n:\n        out = digits[n % {b}] + out\n        n //= {b}\n"
           "    return sign + out\n")
    note = f" (digits above 9 as {'upper' if upper else 'lower'}case letters)" if b > 10 else ""
    return Task(name, 3, {"b": b, "upper": upper}, "to_base", "n",
                f"returns the integer `n` written in base {b} as a string{note}, with a leading '-' for negative numbers and '0' for zero",
                ref, ((0,), (-1,), (b,)), lambda r: (r.randint(-2000, 5000),))


@template(3)
def _top_words(rng, name):
    k = rng.randint(1, 4)
    ref = ("def top_words(text):\n    counts = {}\n    for w in text.lower().split():\n        counts[w] = counts.get(w, 0) + 1\n"
           f"    return sorted(counts, key=lambda w: (-counts[w], w))[:{k}]\n")
    return Task(name, 3, {"k": k}, "top_words", "text",
                f"returns the {k} most frequent words of `text` (words are split on whitespace and lowercased) as a list, "
                f"most frequent first, ties broken alphabetically; fewer if there are fewer than {k} distinct words",
                ref, (("",), ("b a B",)), lambda r: (" ".join(w.upper() if r.random() < 0.2 else w for w in _words(r, 2, 12)),))


@template(3)
def _parse_pairs(rng, name):
    sep = rng.choice([";", ",", "&", "|"])
    kv = rng.choice(["=", ":"])
    ref = (f"def parse_pairs(s):\n    out = {{}}\n    for item in s.split({sep!r}):\n        if {kv!r} not in item:\n"
           f"            continue\n        key, value = item.split({kv!r}, 1)\n        key = key.strip()\n"
           "        if key:\n            out[key] = value.strip()\n    return out\n")

    def gen(r):
        items = []
        for _ in range(r.randint(1, 5)):
            key = r.choice(["a", "b", "name", "x", " y "])
            items.append(key + kv + r.choice(["1", " two ", "", "3" + kv + "4"]) if r.random() < 0.85 else "junk")
        return (sep.join(items),)

    return Task(name, 3, {"sep": sep, "kv": kv}, "parse_pairs", "s",
                f"parses a string of 'key{kv}value' items separated by {sep!r} into a dict of strings: keys and values are "
                f"stripped of surrounding whitespace, the value is everything after the first {kv!r}, items without {kv!r} "
                "or with an empty key are skipped, and a later key overwrites an earlier one",
                ref, (("",), (f"a{kv}1{sep}a{kv}2",), (f"{kv}x{sep}k{kv}",)), gen)


@template(3)
def _compress_ranges(rng, name):
    sep = rng.choice([",", ", "])
    dash = rng.choice(["-", ".."])
    ref = ("def compress_ranges(nums):\n    vals = sorted(set(nums))\n    out = []\n    i = 0\n    while i < len(vals):\n"
           "        j = i\n        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:\n            j += 1\n"
           f"        out.append(str(vals[i]) if i == j else str(vals[i]) + {dash!r} + str(vals[j]))\n        i = j + 1\n"
           f"    return {sep!r}.join(out)\n")
    return Task(name, 3, {"sep": sep, "dash": dash}, "compress_ranges", "nums",
                f"sorts the distinct integers of `nums` and returns them as a string of runs joined by {sep!r}, a run of "
                f"consecutive integers a..b (b > a) written as a{dash}b and a single integer as itself ('' for an empty list)",
                ref, (([],), ([5, 5],), ([3, 1, 2],)), lambda r: (_ints(r, 0, 15, 1, 10),))


@template(3)
def _spiral(rng, name):
    cw = rng.random() < 0.5
    if cw:
        ref = ("def spiral(matrix):\n    m = [row[:] for row in matrix]\n    out = []\n    while m and m[0]:\n"
               "        out += m.pop(0)\n        m = [list(r) for r in zip(*m)][::-1]\n    return out\n")
    else:
        ref = ("def spiral(matrix):\n    m = [list(r) for r in zip(*matrix)]\n    out = []\n    while m and m[0]:\n"
               "        out += m.pop(0)\n        m = [list(r) for r in zip(*m)][::-1]\n    return out\n")

    def gen(r):
        h, w = r.randint(1, 4), r.randint(1, 4)
        return ([[r.randint(0, 9) for _ in range(w)] for _ in range(h)],)

    what = ("clockwise, starting along the first row" if cw
            else "counter-clockwise, starting down the first column")
    return Task(name, 3, {"cw": cw}, "spiral", "matrix",
                f"returns the elements of the rectangular matrix `matrix` (a list of rows) in spiral order, going {what} "
                "from the top-left corner ([] for an empty matrix)",
                ref, (([],), ([[1]],), ([[1, 2, 3]],)), gen)


# ---- problem generation ---------------------------------------------------------------------

def _call(ref_src: str, func: str, args: tuple[Any, ...]) -> Any:
    ns: dict[str, Any] = {}
    exec(compile(ref_src, f"<reference {func}>", "exec"), ns)  # our own trusted source
    return ns[func](*copy.deepcopy(args))


def _render(value: Any) -> str:
    return repr(value)


def build_problem(task: Task, seed: int, pid: str) -> Problem:
    rng = random.Random(f"pyfunc-tests|{seed}|{task.key}")
    inputs: list[tuple[Any, ...]] = []
    seen: set[str] = set()

    def add(args: tuple[Any, ...]) -> None:
        k = json.dumps(args)
        if k not in seen:
            seen.add(k)
            inputs.append(args)

    for _ in range(20):  # the example: a random, non-trivial input
        add(task.gen(rng))
        if inputs:
            break
    for e in task.edge:
        add(e)
    tries = 0
    while len(inputs) < max(N_TESTS, len(task.edge) + 2) and tries < 100:
        add(task.gen(rng))
        tries += 1
    tests = []
    for args in inputs:
        result = _call(task.reference, task.func_name, args)
        tests.append({
            "input": "\n".join(json.dumps(a) for a in args),
            "output": json.dumps(result),
            "testtype": "functional",
            "hidden": False,
        })
    ex_args = inputs[0]
    ex_out = _call(task.reference, task.func_name, ex_args)
    call = f"{task.func_name}({', '.join(_render(a) for a in ex_args)})"
    prompt = (
        f"Write a Python function `{task.func_name}({task.args})` that {task.description}.\n\n"
        f"Example: `{call}` returns `{_render(ex_out)}`.\n\n"
        "Return only the function in a ```python code block."
    )
    data = {"tests": tests, "func_name": task.func_name, "template": task.template, "params": task.params}
    return Problem(id=pid, prompt=prompt, reference=task.reference, difficulty=task.difficulty, data=data,
                   reference_format="python")


def generate_problems(seed: int, difficulty: int, n_train: int, n_val: int) -> dict[str, list[Problem]]:
    """Deterministic problems for (seed, difficulty). A task (template + parameters) goes to val
    when a hash of (seed, key) says so (1 in 3), else to train: the splits never share a task."""
    if difficulty not in DIFFICULTIES:
        raise WorldError(f"pyfunc difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    pool = [(n, fn) for n, d, fn in _TEMPLATES if d == difficulty]
    rng = random.Random(f"pyfunc|{seed}|{difficulty}")
    want = {"train": n_train, "val": n_val}
    tasks: dict[str, list[Task]] = {"train": [], "val": []}
    seen: set[str] = set()
    draws = 0
    while any(len(tasks[s]) < want[s] for s in want) and draws < _MAX_DRAWS:
        draws += 1
        name, fn = pool[rng.randrange(len(pool))]
        task = fn(rng, name)
        if task.key in seen:
            continue
        seen.add(task.key)
        h = int.from_bytes(hashlib.sha256(f"{seed}|{task.key}".encode()).digest()[:8], "big")
        split = "val" if h % 3 == 0 else "train"
        if len(tasks[split]) < want[split]:
            tasks[split].append(task)
    for s in want:
        if len(tasks[s]) < want[s]:
            raise WorldError(
                f"pyfunc difficulty {difficulty}: only {len(tasks[s])} distinct {s} tasks exist, "
                f"{want[s]} requested (lower n_{s})")
    return {
        s: [build_problem(t, seed, f"pyfunc-d{difficulty}-{s}-{i:05d}") for i, t in enumerate(tasks[s])]
        for s in want
    }
