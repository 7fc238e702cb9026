"""The code judge and world=code: extract the program from a model response, run its tests in the
sandbox, and turn the outcome into judge-like feedback.

Modules in the order a response meets them: extract (TestCase, ``extract_code``), judge (the
harness of harness_program.py run in the sandbox, each test graded, the feedback), compare (the
two gradings' comparisons, outside the sandbox), lcb (LiveCodeBench's test encoding) and world
(CodeJsonlWorld). world=pyfunc (worlds/pyfunc/) uses the same judge.

Two test types, as in LiveCodeBench (LCB):

* ``stdin``: the program reads ``input`` from stdin; its stdout is compared with ``output``;
* ``functional``: ``input`` is newline-separated JSON values, one per argument; the function
  ``func_name`` (a method of ``Solution`` when the code defines that class) is called and its
  result compared with the JSON-decoded ``output``.

Two gradings (``GRADINGS``; the table of what differs is docs/code-judge.md):

* ``lcb`` (the default of world=code): LiveCodeBench's own verdicts, reimplemented from its
  grader (``lcb_runner/evaluation/testing_util.py``, ``lcb_runner/utils/extraction_utils.py``;
  none of its code is used). The code is the text between the last two lines that contain
  ```````; stdout is compared line by line after ``strip()``, a line that differs must be equal as
  a list of exact decimals (``15.0`` == ``15``, ``0.3333`` != ``0.33333``); a returned value is
  compared with ``==`` after a top-level tuple becomes a list; LCB's prelude of pre-imported
  modules, its recursion limit (50 000) and int-to-str digit limit (50 000); 6 s per test; an
  exit status is ignored; grading stops at the first failing test, as LCB's does.
* ``lenient`` (the default of world=pyfunc, the judge this platform always had): the last
  ```python`` block (``~~~`` fences, unterminated or glued closing fences accepted); whitespace
  runs collapsed; numbers within 1e-6; tuples anywhere as lists; a smaller prelude; the time limit
  (``SandboxLimits.wall_s``) covers all tests of a response together. Friendlier to a small model,
  and not comparable with published LCB numbers.

Nothing of a hidden test reaches the model: the expected outputs never enter the sandbox (the
harness only runs the program and reports what it produced; the comparison happens here, in the
trusted process). When a problem has hidden tests whose content the feedback must not show, every
test runs in its own sandbox holding only that test's input; the feedback names, for those tests,
only how many passed and one fixed category (wrong answer, runtime error, time limit, memory
limit, output limit), never a text, a time or a test number the program could steer. Problems
whose tests are all public (pyfunc; ``reveal_hidden``) run all tests in one sandbox.
"""

from opsd_platform.config.choices import GRADINGS
from opsd_platform.worlds.code.extract import LCB_TIMEOUT_S, TESTTYPES, TestCase, extract_code
from opsd_platform.worlds.code.judge import judge_code
from opsd_platform.worlds.code.lcb import decode_lcb_tests
from opsd_platform.worlds.code.world import CodeJsonlWorld

__all__ = ["GRADINGS", "LCB_TIMEOUT_S", "TESTTYPES", "TestCase", "extract_code", "judge_code", "decode_lcb_tests",
           "CodeJsonlWorld"]
