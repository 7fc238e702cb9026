"""Every context type's teacher prompt, decoded through a real chat template."""

import pytest

from opsd_platform.models import build_char_tokenizer
from opsd_platform.training.contexts import CONTEXTS, STATIC_PREAMBLE, Attempt, build_group, get_builder
from opsd_platform.training.sequences import chat_ids
from opsd_platform.worlds.base import Judgement, Problem

PROBLEM = Problem(id="p1", prompt="What is 7 + 5?", reference="7 + 5 = 12. The answer is 12.", data={"answer": 12})
WRONG_1 = Attempt("7 + 5 = 13", Judgement(0.0, "Your final answer 13 is incorrect: it is too high.", False))
RIGHT = Attempt("Adding the ones: 7 + 5 = 12.\nThe answer is 12.", Judgement(1.0, "Correct.", True))
WRONG_2 = Attempt("I think 11", Judgement(0.0, "Your final answer 11 is incorrect: it is too low.", False))
ATTEMPTS = [WRONG_1, RIGHT, WRONG_2]


def decoded(message):
    tok = build_char_tokenizer()
    return tok.decode(chat_ids(tok, message))


def test_table_is_complete():
    assert list(CONTEXTS) == ["none", "static", "feedback", "peer_hints", "peer_solution", "peer_or_feedback",
                             "reference", "graded", "shuffled_reference", "retry"]
    with pytest.raises(ValueError, match="valid: none, static"):
        get_builder("oracle")


def test_none_gives_every_sample_the_plain_student_prompt():
    out = build_group("none", PROBLEM, ATTEMPTS)
    assert out == [PROBLEM.prompt] * 3
    assert decoded(out[0]) == "<|im_start|>user\nWhat is 7 + 5?<|im_end|>\n<|im_start|>assistant\n"


def test_static_adds_the_same_preamble_to_all():
    out = build_group("static", PROBLEM, ATTEMPTS)
    assert all(m == f"{PROBLEM.prompt}\n\n{STATIC_PREAMBLE}" for m in out)
    assert STATIC_PREAMBLE in decoded(out[1])


def test_feedback_only_for_failed_samples_with_their_own_feedback():
    out = build_group("feedback", PROBLEM, ATTEMPTS)
    assert out[1] is None  # a success has nothing to learn from its "Correct."
    assert "too high" in out[0] and "7 + 5 = 13" in out[0] and "too low" not in out[0]
    assert "too low" in out[2] and "I think 11" in out[2]
    text = decoded(out[0])
    assert text.startswith("<|im_start|>user\nWhat is 7 + 5?\n\nAn earlier attempt")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_peer_solution_uses_another_correct_sample_never_itself():
    out = build_group("peer_solution", PROBLEM, ATTEMPTS)
    assert RIGHT.response in out[0] and RIGHT.response in out[2]
    assert out[1] is None  # the only correct sample has no *other* correct peer
    two_right = [RIGHT, Attempt("12", Judgement(1.0, "Correct.", True))]
    out2 = build_group("peer_solution", PROBLEM, two_right)
    assert "\n12\n" in out2[0] and RIGHT.response in out2[1]


def test_no_peer_succeeded_means_no_teacher():
    assert build_group("peer_solution", PROBLEM, [WRONG_1, WRONG_2]) == [None, None]
    assert build_group("peer_hints", PROBLEM, [WRONG_1, WRONG_2]) == [None, None]


def test_peer_hints_show_only_the_opening_of_a_correct_peer():
    out = build_group("peer_hints", PROBLEM, ATTEMPTS)
    assert out[0].startswith(PROBLEM.prompt + "\n\nHint:")
    assert "Adding the ones" in out[0]
    assert "The answer is 12" not in out[0]
    assert out[1] is None


def test_peer_or_feedback_prefers_peer_then_feedback():
    out = build_group("peer_or_feedback", PROBLEM, ATTEMPTS)
    assert RIGHT.response in out[0]
    assert out[1] is None  # correct, no other correct peer, and no failure to explain
    only_wrong = build_group("peer_or_feedback", PROBLEM, [WRONG_1, WRONG_2])
    assert "too high" in only_wrong[0] and "too low" in only_wrong[1]


def test_reference_for_everyone_in_the_answer_form_v1_with_instruction_not_to_copy():
    for m in build_group("reference", PROBLEM, ATTEMPTS):
        assert PROBLEM.reference in m and "do not copy" not in m and "own words" not in m
    for m in build_group("reference", PROBLEM, ATTEMPTS, form=1):  # bench-v1's wording, kept
        assert PROBLEM.reference in m and "do not copy" in m
    blank = Problem(id="p2", prompt="x", reference="   ")
    assert build_group("reference", blank, [WRONG_1]) == [None]


def test_long_attempts_are_cut():
    huge = Attempt("x" * 10_000, Judgement(0.0, "y" * 10_000, False))
    out = build_group("feedback", PROBLEM, [huge])[0]
    assert len(out) < 3000 and "..." in out


def test_base_model_without_chat_template_gets_the_plain_message():
    tok = build_char_tokenizer()
    tok.chat_template = None
    assert tok.decode(chat_ids(tok, "What is 7 + 5?")) == "What is 7 + 5?\n"


def test_graded_reveals_the_chosen_share_of_the_reference():
    from opsd_platform.training.contexts import reference_prefix

    ref = "one two three four five six seven eight"
    assert reference_prefix(ref, 0.0) == ""
    assert reference_prefix(ref, 0.25) == "one two"
    assert reference_prefix(ref, 0.5) == "one two three four"
    assert reference_prefix(ref, 1.0) == ref
    problem = Problem(id="p", prompt="Say the numbers.", reference=ref, data={})
    attempts = ATTEMPTS[:2]
    none_like = build_group("graded", problem, attempts, graded_fraction=0.0, form=1)
    assert none_like == [problem.prompt] * 2  # nothing revealed: the plain prompt, like `none`
    half = build_group("graded", problem, attempts, graded_fraction=0.5, form=1)[0]
    assert "one two three four" in half and "five" not in half and "beginning" in half
    full = build_group("graded", problem, attempts, graded_fraction=1.0, form=1)[0]
    assert ref in full and "beginning" not in full
    no_ref = Problem(id="q", prompt="x", reference="", data={})
    assert build_group("graded", no_ref, attempts, graded_fraction=0.5) == [None, None]


# ---------------------------------------------------------------- form 2 (bench-v2)


def _pyfunc_problems(n=3):
    from opsd_platform.worlds.pyfunc import PyFuncWorld

    return PyFuncWorld(seed=0, difficulty=1, n_train=n, n_val=1, grading="lcb").problems("train")


def test_code_contexts_are_extractable_by_the_lcb_grader_when_the_teacher_copies_them():
    """What the teacher would answer by copying the code it is shown is code the grader extracts
    (bench-v1's unfenced reference was not: the grader found nothing)."""
    from opsd_platform.training.contexts import CONTEXTS, Sample
    from opsd_platform.worlds.code.extract import extract_code

    problems = _pyfunc_problems()
    p = problems[0]
    assert p.reference_format == "python"
    for name in ("reference", "shuffled_reference", "graded"):
        ctx = CONTEXTS[name](Sample(p, WRONG_1, [], 1.0, other=problems[1]))
        code = extract_code(ctx, "lcb")
        assert code is not None, name
        expected = problems[1].reference if name == "shuffled_reference" else p.reference
        assert code.strip() == expected.strip(), name
    v1 = CONTEXTS["reference"](Sample(p, WRONG_1, [], form=1))
    assert extract_code(v1, "lcb") is None  # the artefact form 2 removes


def test_graded_form2_reveals_increasing_prefixes_of_the_worked_solution():
    from opsd_platform.training.contexts import worked_prefix
    from opsd_platform.worlds.arithmetic import ArithmeticWorld

    p = ArithmeticWorld(seed=0, difficulty=1, n_train=4, n_val=1).problems("train")[2]
    assert len(p.worked.split()) >= 15  # long enough to be a dial, unlike the 9-word reference
    shares = [0.0, 0.25, 0.5, 0.75, 1.0]
    shown = [worked_prefix(p.worked, f) for f in shares]
    assert shown[0] == "" and shown[-1] == p.worked
    for a, b in zip(shown, shown[1:]):
        assert b.startswith(a) and len(b) > len(a)
    assert worked_prefix("a b c d e f g h i", 0.5) == "a b c d e"  # rounded up (v1's round() gave 4 words)
    code = "def f(x):\n    return x + 1\n"
    assert worked_prefix(code, 0.5) == "def f(x):\n    return"  # line breaks and indentation kept
    msgs = [build_group("graded", p, ATTEMPTS[:1], graded_fraction=f)[0] for f in shares]
    assert msgs[0] == p.prompt and "beginning" in msgs[2] and p.worked in msgs[-1]


def test_controls_have_the_form_of_their_context_without_its_content():
    from opsd_platform.training.contexts import build_for_rollouts

    problems = _pyfunc_problems()
    texts = ["a"] * len(problems)
    verdicts = [Judgement(0.0, "wrong", False)] * len(problems)
    shuffled = build_for_rollouts("shuffled_reference", problems, texts, verdicts, 1)
    real = build_for_rollouts("reference", problems, texts, verdicts, 1)
    for b, (s, r) in enumerate(zip(shuffled, real)):
        assert problems[b].reference not in s and problems[(b + 1) % 3].reference in s
        assert s.replace(problems[(b + 1) % 3].reference, "") == r.replace(problems[b].reference, "")  # same form
    assert build_for_rollouts("shuffled_reference", problems[:1], texts[:1], verdicts[:1], 1) == [None]
    retry = build_group("retry", PROBLEM, ATTEMPTS)
    assert all(m is not None and "Try again" in m for m in retry)  # every sample, passed or not
    assert all("Correct" not in m and "too" not in m for m in retry)  # no verdict, no feedback
