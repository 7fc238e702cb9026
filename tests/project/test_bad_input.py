"""Bad input through the real `opsd` CLI: each case gives exactly one line on stderr that names
the problem, exit code 2, and no traceback.

CASES is the "Bad input" table of docs/bad-input.md (linked from the README): `test_readme_table_is_the_cases` fails when they differ;
`python -m tests.project.test_bad_input` prints the table to paste. In a case, `/data` stands for a
directory prepared by the `data` fixture (datasets, a store with a registered law, a store with
too few configurations); the test substitutes the real path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import FIXTURES, ROOT, runs_logged

DATA = "/data"  # placeholder in CASES for the fixture's directory


@dataclass(frozen=True)
class Case:
    what: str  # the kind of bad input (the table's first column)
    args: str  # the `opsd` command line, space-separated, /data for the fixture's directory
    message: str  # the whole line on stderr


STORE = f"tracking.uri=sqlite:///{DATA}/store/mlflow.db"  # a store with law opsd-gap-law v1 @champion
TRAIN = "train model=tiny trainer.max_steps=1"

CASES = [
    # ------------------------------------------------------------------ config keys, types, ranges
    Case("unknown config key", f"{TRAIN} optim.learning_rate=0.1",
         "opsd train: config error: unknown key optim.learning_rate; valid keys here: lr, weight_decay, eps, grad_clip, fused"),
    Case("unknown config key (added with +)", f"{TRAIN} +optim.learning_rate=0.1",
         "opsd train: config error: unknown key optim.learning_rate; valid keys here: lr, weight_decay, eps, grad_clip, fused"),
    Case("unknown config group option", f"{TRAIN} world=chess",
         "opsd train: bad config override: In 'train': Could not find 'world/chess' Available options in 'world': arithmetic code hidden_rule pyfunc"),
    Case("unknown key of law show", "law show version_name=1",
         "opsd law: config error: unknown key version_name; valid keys here: name, version, force, tracking"),
    Case("unknown key of fit-law", "fit-law law.methd=ols",
         "opsd fit-law: config error: unknown key law.methd; valid keys here: experiment, calibration, calibrations, method, ..."),
    Case("train key given to fit-law", "fit-law model=tiny",
         "opsd fit-law: unknown override(s) model=tiny; fit-law takes law.* and tracking.* keys"),
    Case("unknown key of calibrate", "calibrate calibrate.seed=[0,1]",
         "opsd calibrate: config error: unknown key calibrate.seed; valid keys here: name, contexts, seeds, worlds, models"),
    Case("unknown key of search", "search search.trials=4",
         "opsd search: config error: unknown key search.trials; valid keys here: study, space, n_trials, ..."),
    Case("wrong type (float)", f"{TRAIN} optim.lr=fast",
         "opsd train: bad config override: Error merging override optim.lr=fast: Value 'fast' of type 'str' could not be converted to Float"),
    Case("wrong type (int)", f"{TRAIN} trainer.max_steps=1.5",
         "opsd train: bad config override: Error merging override trainer.max_steps=1.5: Value '1.5' of type 'float' could not be converted to Integer"),
    Case("wrong type (bool)", f"{TRAIN} model.lora.enabled=maybe",
         "opsd train: bad config override: Error merging override model.lora.enabled=maybe: Value 'maybe' is not a valid bool (type str)"),
    Case("negative learning rate", f"{TRAIN} optim.lr=-1e-5",
         "opsd train: config error: optim.lr: must be > 0, got -1e-05"),
    Case("top-K < 1", f"{TRAIN} loss.top_k=0",
         "opsd train: config error: loss.top_k: must be >= 1, got 0"),
    Case("alpha > 1", f"{TRAIN} loss.divergence=jsd loss.alpha=1.5",
         "opsd train: config error: loss.alpha: must be in [0, 1], got 1.5"),
    Case("alpha < 0", f"{TRAIN} loss.divergence=jsd loss.alpha=-0.1",
         "opsd train: config error: loss.alpha: must be in [0, 1], got -0.1"),
    Case("unknown value", f"{TRAIN} teacher.kind=oracle",
         "opsd train: config error: teacher.kind: unknown value 'oracle'; valid: ema, fixed, live"),
    Case("unknown algorithm", f"{TRAIN} algorithm=ppo",
         "opsd train: config error: algorithm: unknown value 'ppo'; valid: opsd, grpo"),
    Case("GRPO without a group of samples", f"{TRAIN} algorithm=grpo rollout.samples_per_prompt=1",
         "opsd train: config error: rollout.samples_per_prompt: algorithm=grpo needs >= 2 samples per prompt (its "
         "advantages compare the samples of one prompt: a group of 1 has no baseline), got 1"),
    Case("GRPO option under OPSD", f"{TRAIN} loss.kl_beta=0.1",
         "opsd train: config error: loss.kl_beta: only used by algorithm=grpo; algorithm=opsd ignores it (unset it, "
         "or set algorithm=grpo)"),
    Case("out-of-range search setting", "search search.n_trials=0",
         "opsd search: search.n_trials: must be >= 1, got 0"),
    Case("unknown code grading", f"{TRAIN} world=pyfunc world.grading=strict",
         "opsd train: config error: world.grading: unknown value 'strict'; valid: lcb, lenient"),
    # ------------------------------------------------------------------ datasets
    Case("dataset path missing", f"{TRAIN} world=code",
         "opsd train: config error: world.path: required for world=code (a LiveCodeBench-style JSONL file)"),
    Case("dataset file missing", f"{TRAIN} world=code world.path={DATA}/nope.jsonl",
         "opsd train: /data/nope.jsonl: file not found"),
    Case("empty dataset", f"{TRAIN} world=code world.path={DATA}/empty.jsonl",
         "opsd train: /data/empty.jsonl: empty dataset"),
    Case("malformed JSONL line", f"{TRAIN} world=code world.path={DATA}/malformed.jsonl",
         "opsd train: /data/malformed.jsonl:2: invalid JSON: Expecting value (column 43)"),
    Case("record missing a field", f"{TRAIN} world=code world.path={DATA}/no_tests.jsonl",
         "opsd train: /data/no_tests.jsonl:1: missing field 'public_test_cases'"),
    Case("dataset not UTF-8", f"{TRAIN} world=code world.path={DATA}/latin1.jsonl",
         "opsd train: /data/latin1.jsonl: not UTF-8 text (invalid continuation byte at byte 23)"),
    Case("empty responses file", f"judge world=code problems={DATA}/problems.jsonl responses={DATA}/empty.jsonl",
         "opsd judge: /data/empty.jsonl: no responses (empty file)"),
    Case("response to an unknown problem", f"judge world=code problems={DATA}/problems.jsonl responses={DATA}/stray.jsonl",
         "opsd judge: /data/stray.jsonl:2: unknown question_id 'q9'"),
    # ------------------------------------------------------------------ models
    Case("model path missing", "train model=gguf",
         "opsd train: config error: model.path: required when model.source=gguf"),
    Case("GGUF file missing", f"{TRAIN} model=gguf model.path=/nope.gguf",
         "opsd train: model.path=/nope.gguf: GGUF file not found"),
    Case("HF model directory missing", f"{TRAIN} model=hf model.path=/nope",
         "opsd train: model.path=/nope: not a Hugging Face model directory (no config.json)"),
    # ------------------------------------------------------------------ registry, law, resume
    Case("registered model missing", f"law show name=nope {STORE}",
         "opsd law: no registered model 'nope'; registered models: opsd-gap-law"),
    Case("alias missing (no @challenger to promote)", f"law promote {STORE}",
         "opsd law: registered model 'opsd-gap-law' has no alias 'challenger'; aliases: @champion -> v1; versions: 1"),
    Case("version missing", f"law promote version=7 {STORE}",
         "opsd law: registered model 'opsd-gap-law' has no version 7; versions: 1"),
    Case("law with too few points (2 configurations)", f"fit-law tracking.uri=sqlite:///{DATA}/two/mlflow.db",
         "opsd fit-law: need at least 3 configurations, got 2: synthetic/arithmetic/none, synthetic/arithmetic/reference (nothing was registered)"),
    Case("law on an empty store", f"fit-law tracking.uri=sqlite:///{DATA}/empty/mlflow.db",
         "opsd fit-law: no experiment 'opsd' in sqlite:////data/empty/mlflow.db; experiments: Default (nothing was registered)"),
    Case("resume of a run that does not exist", f"{TRAIN} resume=0123abcd {STORE}",
         "opsd train: resume=0123abcd: run 0123abcd has no checkpoint under /data/store/checkpoints; no run has a checkpoint under /data/store/checkpoints"),
    # ------------------------------------------------------------------ tracking store, search storage
    Case("tracking URI: a directory (file store)", f"{TRAIN} tracking.uri={DATA}/mlruns",
         "opsd train: tracking.uri=/data/mlruns: a directory (MLflow's file store) is not supported; use sqlite:////abs/path/mlflow.db or a tracking server http(s)://host:port"),
    Case("tracking URI: relative SQLite path", f"{TRAIN} tracking.uri=sqlite:///mlflow.db",
         "opsd train: tracking.uri=sqlite:///mlflow.db: use an absolute sqlite path (sqlite:////abs/path/mlflow.db)"),
    Case("tracking URI: directory cannot be created", "law show tracking.uri=sqlite:////proc/opsd/mlflow.db",
         "opsd law: tracking.uri=sqlite:////proc/opsd/mlflow.db: cannot create directory /proc/opsd: No such file or directory"),
    Case("tracking URI: unsupported scheme", f"{TRAIN} tracking.uri=ftp://host/mlflow",
         "opsd train: tracking.uri=ftp://host/mlflow: unsupported scheme 'ftp'; valid: sqlite, http, https, postgresql, mysql, mssql, databricks, databricks-uc, uc"),
    Case("tracking server not answering", f"{TRAIN} tracking.uri=http://127.0.0.1:1",
         "opsd train: tracking.uri=http://127.0.0.1:1: cannot reach the tracking server: [Errno 111] Connection refused"),
    Case("tracking database not answering", f"{TRAIN} tracking.uri=postgresql+psycopg2://opsd:secret@127.0.0.1:1/mlflow",
         'opsd train: tracking.uri=postgresql+psycopg2://opsd:***@127.0.0.1:1/mlflow: cannot connect: (psycopg2.OperationalError) connection to server at "127.0.0.1", port 1 failed: Connection refused'),
    Case("search storage: PostgreSQL not answering", f"search model=tiny search.storage=postgresql+psycopg2://opsd:secret@127.0.0.1:1/optuna {STORE}",
         'opsd search: search.storage: cannot open postgresql+psycopg2://opsd:***@127.0.0.1:1/optuna: (psycopg2.OperationalError) connection to server at "127.0.0.1", port 1 failed: Connection refused'),
    Case("search storage: relative SQLite path", f"search model=tiny search.storage=sqlite:///optuna.db {STORE}",
         "opsd search: search.storage: use an absolute SQLite path (sqlite:////abs/path/optuna.db), got sqlite:///optuna.db"),
    Case("compare-grpo: unknown candidate context", "compare-grpo model=tiny compare.contexts=[feedback,oracle]",
         "opsd compare-grpo: compare.contexts: unknown context(s) oracle; valid: none, static, feedback, peer_hints, peer_solution, peer_or_feedback, reference, graded, "
         "shuffled_reference, retry"),
    Case("compare-grpo without a registered law", f"compare-grpo model=tiny tracking.uri=sqlite:///{DATA}/empty/mlflow.db",
         "opsd compare-grpo: no gap law to predict OPSD's improvement with (no registered model 'opsd-gap-law'; registered models: none) "
         "in sqlite:////data/empty/mlflow.db; register one: opsd calibrate, then opsd fit-law, on this store "
         "(or opsd fit-law law.table=DIR: from a recorded runs.csv table)"),
    # ------------------------------------------------------------------ a new user's first hour
    Case("tracking URI: a file that is not a database", f"{TRAIN} tracking.uri=sqlite:///{DATA}/notes.db",
         "opsd train: tracking.uri=sqlite:////data/notes.db: /data/notes.db is not an SQLite database; name an MLflow "
         "store (.../mlflow.db) or a file that does not exist yet"),
    Case("empty experiment name", f"{TRAIN} tracking.experiment=",
         "opsd train: config error: tracking.experiment: must not be empty (default: opsd)"),
    Case("judge without responses", f"judge world=code problems={DATA}/problems.jsonl",
         'opsd judge: responses: required: responses=FILE.jsonl (one {"question_id": ..., "response": ...} per line)'),
    Case("dashboard: a storage Optuna cannot open", "dashboard storage=redis://localhost:6379",
         "opsd dashboard: storage=redis://localhost:6379: unsupported scheme 'redis'; valid: sqlite, postgresql, mysql "
         "(e.g. storage=sqlite:////abs/path/optuna.db)"),
    Case("ui: port not a number", "ui port=abc",
         "opsd ui: bad config override: Error merging override port=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    Case("ui: port out of range", "ui port=-5", "opsd ui: config error: port: must be in [1, 65535], got -5"),
    Case("ui: a host that is no address", f"ui host=0.0.0.0.0 {STORE}",
         "opsd ui: host=0.0.0.0.0: not an address this machine can listen on (...)"),
    Case("ui: a store that does not exist", f"ui tracking.uri=sqlite:///{DATA}/stor/mlflow.db",
         "opsd ui: tracking.uri=sqlite:////data/stor/mlflow.db: no MLflow store at /data/stor/mlflow.db; check the "
         "path, or run a command that records runs first (opsd train), or pass create=true for a new empty store"),
    Case("unknown command", "frobnicate",
         "opsd: unknown command 'frobnicate'; valid: train, gap, calibrate, fit-law, search, grid, export, law, compare-grpo, judge, ui, setup, dashboard"),
]


def lcb_record(qid: str, **changes) -> str:
    import json

    record = json.loads((FIXTURES / "lcb_sample.jsonl").read_text().splitlines()[0])
    record["question_id"] = qid
    record.update(changes)
    return json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False)


def log_points(uri: str, configs: list[tuple[str, float, float]]) -> None:
    """Finished training runs with a gap and an improvement, as calibration leaves them."""
    from opsd_platform import tracking

    client = tracking.init_store(uri)
    exp_id = tracking.ensure_experiment(client, uri, "opsd")
    for context, gap, improvement in configs:
        for seed in (0, 1):
            run = client.create_run(exp_id, tags={"kind": "train", "context": context, "world": "arithmetic",
                                                  "model_family": "synthetic", "seed": str(seed), "config_hash": context})
            client.log_metric(run.info.run_id, "gap/value", gap + 0.01 * seed)
            client.log_metric(run.info.run_id, "improvement", improvement + 0.02 * seed)
            client.set_terminated(run.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The directory that stands for /data in CASES."""
    from opsd_platform.cli import main

    d = tmp_path_factory.mktemp("bad_input")
    (d / "empty.jsonl").write_text("")
    (d / "malformed.jsonl").write_text(lcb_record("q1") + "\n" + '{"question_id": "q2", "question_content": \n')
    (d / "no_tests.jsonl").write_text(lcb_record("q1", public_test_cases=None) + "\n")
    (d / "latin1.jsonl").write_bytes(lcb_record("q1", question_title="caf\u00e9").encode("latin-1") + b"\n")
    (d / "problems.jsonl").write_text(lcb_record("q1") + "\n")
    (d / "notes.db").write_text("not a database\n")
    (d / "stray.jsonl").write_text('{"question_id": "q1", "response": "print(1)"}\n{"question_id": "q9", "response": "x"}\n')
    log_points(f"sqlite:///{d}/two/mlflow.db", [("none", 0.0, 0.0), ("reference", 0.3, 0.2)])
    log_points(f"sqlite:///{d}/store/mlflow.db", [("none", 0.0, 0.0), ("static", 0.05, 0.03), ("feedback", 0.1, 0.1),
                                                  ("peer_solution", 0.2, 0.17), ("reference", 0.3, 0.25)])  # 5: a law that may decide
    assert main(["fit-law", f"tracking.uri=sqlite:///{d}/store/mlflow.db"]) == 0
    from opsd_platform import tracking

    tracking.init_store(f"sqlite:///{d}/empty/mlflow.db")
    return d


def argv(case: Case, data: Path) -> list[str]:
    return case.args.replace(DATA, str(data)).split()


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(case, data, capsys, monkeypatch):
    from opsd_platform.cli import main

    monkeypatch.setenv("OPSD_HOME", str(data / "home"))
    capsys.readouterr()
    assert main(argv(case, data)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert expected(case, data).fullmatch(err.strip()), err
    assert runs_logged(data / "home" / "mlflow.db") == 0  # refused before any run was opened


def expected(case: Case, data: Path) -> re.Pattern:
    """The case's message as a pattern: /data is the fixture's directory, "..." elides the rest
    of a list that grows as keys are added."""
    return re.compile(".*".join(re.escape(part) for part in case.message.replace(DATA, str(data)).split("...")))


SUBPROCESS_CASES = [c for c in CASES if c.what in ("unknown config key", "malformed JSONL line", "tracking URI: unsupported scheme")]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.what for c in SUBPROCESS_CASES])
def test_real_opsd_command_exits_2_without_traceback(case, data):
    """End to end through the installed `opsd` script (a fresh interpreter each: slow, so a few)."""
    opsd = Path(sys.executable).with_name("opsd")
    cmd = [str(opsd)] if opsd.exists() else [sys.executable, "-m", "opsd_platform.cli"]
    env = {**os.environ, "OPSD_HOME": str(data / "home")}
    proc = subprocess.run(cmd + argv(case, data), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and expected(case, data).fullmatch(proc.stderr.strip()), proc.stderr


def render_table(cases=CASES) -> str:
    def cell(text: str) -> str:
        return "`" + text.replace("|", "\\|") + "`"

    lines = ["| bad input | command | message on stderr | exit |", "|---|---|---|---|"]
    lines += [f"| {c.what} | {cell('opsd ' + c.args)} | {cell(c.message)} | 2 |" for c in cases]
    return "\n".join(lines)


def test_readme_table_is_the_cases():
    doc = (ROOT / "docs" / "bad-input.md").read_text()  # the README links it
    section = re.search(r"^## Bad input\n(.*?)(?=^## |\Z)", doc, re.S | re.M)
    assert section, "docs/bad-input.md has no '## Bad input' section"
    assert render_table() in section.group(1), "docs/bad-input.md's Bad input table is stale: python -m tests.project.test_bad_input"


if __name__ == "__main__":
    print(render_table())
