"""Hidden-rule world: infer a string or list transformation from three examples, apply it once more.

Why it is built this way:

* **Induction, not recall.** The prompt shows three ``Input``/``Output`` pairs produced by one
  hidden rule and a query input; the student must find the rule and apply it. The rule families
  are shared between splits, the instances (rule parameters, inputs) are not, so validation
  measures the skill rather than memorised answers.
* **Graded difficulty.** Level 1 holds single, well-known rules (reverse, uppercase, drop vowels,
  sort, double every character or number); level 2 parameterised or positional rules (rotate by
  k, swap neighbouring pairs, keep every second item, sort descending, add k, shift letters by k);
  level 3 composes two rules from levels 1-2. Compositions are kept only when both steps matter
  on every shown input (the result differs from the input and from either step alone).
* **Two kinds of items.** Strings of lowercase letters and lists of small integers, so a model
  cannot succeed with string tricks alone; list outputs are compared after normalising their
  formatting ("[1, 2, 3]", "1,2,3" and "1 2 3" are the same answer).
* **Binary reward, feedback without the answer.** An output is exactly right or wrong. Feedback
  names what is wrong — length, first differing position, right items in the wrong order, letter
  case, items that do not belong, "only one of the two steps applied", "input unchanged" — but it
  never echoes the student's output or shows the expected one; the expected output and the rule in
  words are the ``reference``, which OPSD shows in a separate teacher context.
* **Tolerant extraction.** The text after the last "Output:" / "Answer:" (or "output is") marker,
  else the last non-empty line; quotes, backticks, markdown and trailing punctuation are stripped.
* **Determinism and disjointness.** A private ``random.Random`` keyed by (seed, difficulty);
  validation problems are drawn first so they do not change with ``n_train``; no (rule, query
  input) pair occurs twice across both splits. Every expected string output has at least four
  characters and every list at least three numbers, so an answer cannot hide inside feedback words.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

from opsd_platform.errors import WorldError
from opsd_platform.worlds.base import Judgement, Problem, check_split

DIFFICULTIES: tuple[int, ...] = (1, 2, 3)
LEVEL_DESCRIPTIONS: dict[int, str] = {
    1: "one simple rule (reverse, uppercase, drop vowels, sort, double)",
    2: "one parameterised or positional rule (rotate, swap pairs, every second, add k, shift letters)",
    3: "a composition of two rules",
}
STRING, LIST = "string", "list"
_VOWELS = "aeiou"
_CONSONANTS = "".join(c for c in string.ascii_lowercase if c not in _VOWELS)
_MIN_LENGTH = {STRING: 4, LIST: 3}  # minimum expected-output length (see module docstring)

Seq = Union[str, list[int]]


@dataclass(frozen=True)
class Rule:
    """A named transformation with a description in words for each kind of item it accepts."""

    name: str
    kinds: tuple[str, ...]
    describe: Callable[[str], str]  # kind -> e.g. "reverse the order of the characters"
    apply: Callable[[Seq], Seq]
    parts: tuple[Rule, ...] = field(default=())  # the two steps of a composition


def _items(kind: str) -> str:
    return "characters" if kind == STRING else "numbers"


def _rebuild(like: Seq, items: list) -> Seq:
    return "".join(items) if isinstance(like, str) else list(items)


def _swap_pairs(x: Seq) -> Seq:
    items = list(x)
    for i in range(0, len(items) - 1, 2):
        items[i], items[i + 1] = items[i + 1], items[i]
    return _rebuild(x, items)


def _shift_letter(c: str, k: int) -> str:
    base = ord("a") if c.islower() else ord("A")
    return chr(base + (ord(c) - base + k) % 26) if c.isalpha() else c


# Rule families: (family name, difficulty level, factory taking an rng and returning a Rule).
def _reverse(_: random.Random) -> Rule:
    return Rule("reverse", (STRING, LIST), lambda k: f"reverse the order of the {_items(k)}", lambda x: x[::-1])


def _uppercase(_: random.Random) -> Rule:
    return Rule("uppercase", (STRING,), lambda k: "write every letter in uppercase", lambda x: str(x).upper())


def _drop_vowels(_: random.Random) -> Rule:
    return Rule(
        "drop_vowels",
        (STRING,),
        lambda k: "remove every vowel (a, e, i, o, u)",
        lambda x: "".join(c for c in str(x) if c.lower() not in _VOWELS),
    )


def _sort_letters(_: random.Random) -> Rule:
    return Rule("sort_letters", (STRING,), lambda k: "sort the letters alphabetically", lambda x: "".join(sorted(x)))


def _double_chars(_: random.Random) -> Rule:
    return Rule(
        "double_chars", (STRING,), lambda k: "write every character twice", lambda x: "".join(c * 2 for c in x)
    )


def _sort_ascending(_: random.Random) -> Rule:
    return Rule(
        "sort_ascending", (LIST,), lambda k: "sort the numbers from smallest to largest", lambda x: sorted(x)
    )


def _double_numbers(_: random.Random) -> Rule:
    return Rule(
        "double_numbers", (LIST,), lambda k: "multiply every number by 2", lambda x: [2 * v for v in x]
    )


def _rotate(rng: random.Random) -> Rule:
    n = rng.randint(1, 3)

    def describe(kind: str) -> str:
        what = _items(kind)[:-1] if n == 1 else f"{n} {_items(kind)}"
        return f"move the first {what} to the end"

    return Rule(f"rotate_left_{n}", (STRING, LIST), describe, lambda x: x[n:] + x[:n])


def _swap(_: random.Random) -> Rule:
    return Rule(
        "swap_pairs",
        (STRING, LIST),
        lambda k: f"swap each neighbouring pair of {_items(k)} (1st with 2nd, 3rd with 4th, and so on)",
        _swap_pairs,
    )


def _every_second(_: random.Random) -> Rule:
    return Rule(
        "every_second",
        (STRING, LIST),
        lambda k: f"keep every second {_items(k)[:-1]}, starting with the first",
        lambda x: x[::2],
    )


def _sort_descending(_: random.Random) -> Rule:
    return Rule(
        "sort_descending",
        (LIST,),
        lambda k: "sort the numbers from largest to smallest",
        lambda x: sorted(x, reverse=True),
    )


def _add(rng: random.Random) -> Rule:
    n = rng.randint(1, 9)
    return Rule(f"add_{n}", (LIST,), lambda k: f"add {n} to every number", lambda x: [v + n for v in x])


def _shift(rng: random.Random) -> Rule:
    n = rng.randint(1, 3)
    return Rule(
        f"shift_letters_{n}",
        (STRING,),
        lambda k: f"replace every letter by the letter {n} places later in the alphabet (z wraps around to a)",
        lambda x: "".join(_shift_letter(c, n) for c in str(x)),
    )


_FAMILIES: dict[int, list[Callable[[random.Random], Rule]]] = {
    1: [_reverse, _uppercase, _drop_vowels, _sort_letters, _double_chars, _sort_ascending, _double_numbers],
    2: [_rotate, _swap, _every_second, _sort_descending, _add, _shift],
}


def _compose(first: Rule, second: Rule) -> Rule:
    kinds = tuple(k for k in first.kinds if k in second.kinds)
    return Rule(
        f"{first.name}+{second.name}",
        kinds,
        lambda k: f"first {first.describe(k)}, then {second.describe(k)}",
        lambda x: second.apply(first.apply(x)),
        parts=(first, second),
    )


def _draw_rule(rng: random.Random, difficulty: int) -> Rule:
    if difficulty in _FAMILIES:
        return rng.choice(_FAMILIES[difficulty])(rng)
    pool = _FAMILIES[1] + _FAMILIES[2]
    while True:
        first, second = rng.sample(pool, 2)
        rule = _compose(first(rng), second(rng))
        if rule.kinds:
            return rule


# --------------------------------------------------------------------------- formatting


def canonical(value: Seq) -> str:
    """The one text form of an item: the string itself, or "[1, 2, 3]" for a list."""
    return value if isinstance(value, str) else "[" + ", ".join(str(v) for v in value) + "]"


def _random_input(rng: random.Random, kind: str) -> Seq:
    if kind == STRING:
        length = rng.randint(6, 9)
        return "".join(rng.choice(_VOWELS) if rng.random() < 0.35 else rng.choice(_CONSONANTS) for _ in range(length))
    return [rng.randint(0, 9) for _ in range(rng.randint(4, 7))]


def _usable(rule: Rule, kind: str, x: Seq) -> bool:
    """The rule visibly changes x, the output is long enough, and both steps of a composition matter."""
    y = rule.apply(x)
    if y == x or len(y) < _MIN_LENGTH[kind]:
        return False
    return all(y != part.apply(x) for part in rule.parts)


# --------------------------------------------------------------------------- extraction

# Explicit "Output:" / "Answer:" labels win over phrases like "the output is", which also
# occur in explanations ("the output is formed by ...").
_LABEL = re.compile(r"\b(?:output|answer)\b\s*[:=]", re.IGNORECASE)
_PHRASE = re.compile(r"\b(?:output|answer)\b\s*(?:is|would be|will be|should be)\b\s*[:=]?", re.IGNORECASE)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_QUOTED = re.compile(f"[{_QUOTES}]\\s*([^\\s{_QUOTES}]+)\\s*[{_QUOTES}]")  # one quoted token
_STRIP = " \t*_[](){}<>.,;:!?" + _QUOTES
_LIST_BODY = re.compile(r"\[([^\[\]]*)\]")
_INTEGER = re.compile(r"(?<![0-9])-?[0-9]+")


def _answer_segment(text: str) -> str:
    """Text after the last marker (or on the next non-empty line), else the last non-empty line.

    A last line without a marker but with a colon ("So the result for the query: kwfpn") counts
    from after its last colon.
    """
    markers = list(_LABEL.finditer(text)) or list(_PHRASE.finditer(text))
    if markers:
        rest = text[markers[-1].end() :]
        lines = rest.split("\n")
        if lines[0].strip(_STRIP):
            return lines[0]
        for line in lines[1:]:
            if line.strip(_STRIP):
                return line
        return ""
    lines = [line for line in text.split("\n") if line.strip(_STRIP)]
    if not lines:
        return ""
    after_colon = lines[-1].rsplit(":", 1)[-1]
    return after_colon if after_colon.strip(_STRIP) else lines[-1]


def _normalise_string(segment: str) -> str:
    quoted = _QUOTED.search(segment)
    if quoted:
        return quoted.group(1).strip(_STRIP)
    tokens = [t for t in (tok.strip(_STRIP) for tok in segment.split()) if t]
    if not tokens:
        return ""
    if len(tokens) > 1 and all(len(t) == 1 for t in tokens):  # "d c b a"
        return "".join(tokens)
    return tokens[0]


def _normalise_list(segment: str) -> str:
    body = _LIST_BODY.search(segment)
    numbers = _INTEGER.findall(body.group(1) if body else segment)
    return canonical([int(n) for n in numbers]) if numbers else ""


def extract_output(text: str, kind: str) -> str:
    """The student's output in canonical form ("" when none is found)."""
    segment = _answer_segment(text)
    return _normalise_list(segment) if kind == LIST else _normalise_string(segment)


def _parse(canonical_text: str, kind: str) -> list:
    if kind == STRING:
        return list(canonical_text)
    return [int(n) for n in _INTEGER.findall(canonical_text)]


# --------------------------------------------------------------------------- feedback


def feedback_text(data: dict, given: str) -> str:
    """What is wrong with a wrong output, without revealing (or echoing) any output."""
    kind, expected = data["kind"], data["output"]
    noun = "characters" if kind == STRING else "numbers"
    g, e = _parse(given, kind), _parse(expected, kind)
    parts = ["Your output is incorrect."]
    if given == data.get("input"):
        parts.append("It is the input unchanged, but the rule does change it.")
    elif given in data.get("partial_outputs", []):
        parts.append("It matches applying only one of the rule's two steps; the rule combines two steps.")
    if len(g) != len(e):
        parts.append(f"Your output has {len(g)} {noun}; the expected output has {len(e)}.")
    first = next((i for i in range(min(len(g), len(e))) if g[i] != e[i]), None)
    if first is not None:
        where = f"The first difference is at position {first + 1} (counting from 1)"
        a, b = g[first], e[first]
        reordered = sorted(g) == sorted(e)  # then "too high" / "too late" would only mislead
        if kind == LIST and not reordered:
            where += f": your number there is too {'high' if a > b else 'low'}"
        elif kind == STRING and not reordered and a.isalpha() and b.isalpha() and a.islower() == b.islower():
            where += f": your letter there comes too {'late' if a > b else 'early'} in the alphabet"
        parts.append(where + ".")
    elif len(g) < len(e):
        parts.append("What you wrote is right as far as it goes, but it stops too early.")
    else:
        parts.append("The expected output ends before yours does.")
    if len(g) == len(e):
        if sorted(g) == sorted(e):
            parts.append(f"You have the right {noun}, but in the wrong order.")
        elif kind == STRING and given.lower() == expected.lower():
            parts.append("The letters are right, but the letter case is wrong.")
        else:
            wrong = sum(a != b for a, b in zip(g, e))
            parts.append(f"{wrong} of {len(e)} positions are wrong.")
    extra = sorted(set(g) - set(e))
    if extra:
        shown = ", ".join(str(v) for v in extra)
        parts.append(f"These {noun} should not appear at all: {shown}.")
    return " ".join(parts)


# --------------------------------------------------------------------------- the world

_INSTRUCTIONS = (
    "Each input below is turned into its output by the same hidden rule. "
    "Work out the rule from the examples, then apply it to the last input."
)


class HiddenRuleWorld:
    """Few-shot rule induction over strings and integer lists; binary reward."""

    name: str = "hidden_rule"

    def __init__(self, seed: int = 0, difficulty: int = 1, n_train: int = 64, n_val: int = 32) -> None:
        if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty not in DIFFICULTIES:
            levels = "; ".join(f"{k} = {v}" for k, v in LEVEL_DESCRIPTIONS.items())
            raise WorldError(
                f"hidden_rule difficulty must be an integer from {DIFFICULTIES[0]} to {DIFFICULTIES[-1]}, "
                f"got {difficulty!r} ({levels})"
            )
        for label, n in (("n_train", n_train), ("n_val", n_val)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise WorldError(f"hidden_rule {label} must be a non-negative integer, got {n!r}")
        self.seed, self.difficulty, self.n_train, self.n_val = seed, difficulty, n_train, n_val
        self._splits = self._build()

    def _build(self) -> dict[str, list[Problem]]:
        rng = random.Random(f"hidden_rule:{self.seed}:{self.difficulty}")
        seen: set[tuple[str, str, str]] = set()
        drawn: list[Problem] = []
        total = self.n_val + self.n_train
        attempts = 0
        while len(drawn) < total:
            attempts += 1
            if attempts > 1000 + 200 * total:
                raise WorldError(
                    f"could not draw {total} distinct hidden_rule problems at difficulty {self.difficulty}"
                )
            instance = self._draw_instance(rng)
            if instance is None:
                continue
            rule, kind, inputs = instance
            key = (rule.name, kind, canonical(inputs[-1]))
            if key in seen:
                continue
            seen.add(key)
            split, index = ("val", len(drawn)) if len(drawn) < self.n_val else ("train", len(drawn) - self.n_val)
            drawn.append(self._problem(split, index, rule, kind, inputs))
        # Validation first: the val set stays the same when only n_train changes.
        return {"val": drawn[: self.n_val], "train": drawn[self.n_val :]}

    def _draw_instance(self, rng: random.Random) -> tuple[Rule, str, list[Seq]] | None:
        rule = _draw_rule(rng, self.difficulty)
        kind = rng.choice(rule.kinds)
        inputs: list[Seq] = []
        for _ in range(200):
            x = _random_input(rng, kind)
            if x not in inputs and _usable(rule, kind, x):
                inputs.append(x)
                if len(inputs) == 4:  # three examples and the query
                    return rule, kind, inputs
        return None

    def _problem(self, split: str, index: int, rule: Rule, kind: str, inputs: list[Seq]) -> Problem:
        *examples, query = inputs
        shown = "\n\n".join(f"Input: {canonical(x)}\nOutput: {canonical(rule.apply(x))}" for x in examples)
        prompt = (
            f"{_INSTRUCTIONS}\n\n{shown}\n\nInput: {canonical(query)}\n"
            'Write the output for this last input on the last line, as "Output: <answer>".'
        )
        output = canonical(rule.apply(query))
        words = rule.describe(kind)
        reference = (
            f"The hidden rule: {words[0].upper() + words[1:]}. "
            f"Applied to {canonical(query)} it gives {output}.\nOutput: {output}"
        )
        return Problem(
            id=f"rule-{split}-{index:05d}",
            prompt=prompt,
            reference=reference,
            difficulty=self.difficulty,
            data={
                "output": output,
                "rule": rule.name,
                "kind": kind,
                "description": words,
                "input": canonical(query),
                "partial_outputs": [canonical(part.apply(query)) for part in rule.parts],
            },
        )

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        return list(self._splits[split])

    def judge(self, problem: Problem, response: str) -> Judgement:
        if "output" not in problem.data or problem.data.get("kind") not in (STRING, LIST):
            raise WorldError(f"problem {problem.id!r} lacks data['output'] / data['kind']; not a hidden_rule problem")
        kind = problem.data["kind"]
        given = extract_output(response, kind)
        if not given:
            what = "list of numbers" if kind == LIST else "output"
            return Judgement(
                reward=0.0,
                feedback=f'No {what} found. Put your answer on the last line, as "Output: <answer>".',
                passed=False,
            )
        if given == problem.data["output"]:
            return Judgement(reward=1.0, feedback="Correct.", passed=True)
        return Judgement(reward=0.0, feedback=feedback_text(problem.data, given), passed=False)

    def judge_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Judgement]:
        if len(problems) != len(responses):
            raise WorldError(
                f"judge_many needs one response per problem: got {len(problems)} problems "
                f"and {len(responses)} responses"
            )
        return [self.judge(p, r) for p, r in zip(problems, responses)]
