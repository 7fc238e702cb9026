"""A new user's first hour, the failures that need more than a row of tests/project/test_bad_input.py's
table: a read-only home, a port already taken, a GPU asked for on a CPU machine, `--help` into a
closed pipe, a config error that must not wait for torch, and Ctrl-C during training (exit 130,
the exact `resume=` command, which then works; a re-run is told of the interrupted run)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.config_errors import CASES, probe
from tests.helpers import ROOT, runs_logged

OPSD = [sys.executable, "-m", "opsd_platform.cli"]


def opsd(args: list[str], home: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPSD_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(OPSD + args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, **kw)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _can_mount_read_only() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp"],
        capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="needs unshare -rm (user + mount namespaces) for a read-only mount")
@pytest.mark.parametrize("command", [["train", "model=tiny", "trainer.max_steps=1"], ["fit-law"], ["law", "show"]])
def test_a_read_only_home_is_one_line_at_once(tmp_path, command):
    """OPSD_HOME on a read-only file system (mounted so in a private namespace: root ignores file
    modes): MLflow alone retried for ~110 s and printed a page of traceback."""
    home = tmp_path / "home"
    home.mkdir()
    script = f"mount --bind {home} {home} && mount -o remount,bind,ro {home} && exec \"$@\""
    started = time.monotonic()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *OPSD, *command], capture_output=True, text=True,
                          env={**os.environ, "OPSD_HOME": str(home)}, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == (f"opsd {command[0]}: tracking.uri=sqlite:///{home}/mlflow.db: cannot write to {home}: "
                                     "Read-only file system; point OPSD_HOME or tracking.uri at a writable place")
    assert time.monotonic() - started < 60  # not MLflow's minutes of retries
    assert list(home.iterdir()) == []


def test_a_file_that_is_not_a_database_is_left_as_it_was(tmp_path):
    from opsd_platform.cli import main

    notes = tmp_path / "notes.db"
    notes.write_text("my notes\n")
    assert main(["law", "show", f"tracking.uri=sqlite:///{notes}"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]  # no .lock beside it
    assert notes.read_text() == "my notes\n"


@pytest.mark.parametrize("command", ["ui", "dashboard"])
def test_a_port_already_taken_is_refused_before_the_server_starts(tmp_path, capsys, command):
    """MLflow's server printed "Address already in use" and exited 0."""
    from opsd_platform import tracking
    from opsd_platform.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.init_store(uri)
    if command == "dashboard":
        import optuna

        from opsd_platform.search.study import default_storage

        optuna.create_study(storage=default_storage(uri), study_name="s")  # an Optuna database beside the store
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        capsys.readouterr()
        assert main([command, f"port={port}", f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) == f"opsd {command}: port={port}: cannot listen on 127.0.0.1:{port} (Address already in use); pick another port="


def test_the_ui_creates_a_store_only_when_asked(tmp_path, capsys):
    from opsd_platform.cli import main

    with socket.socket() as taken:  # so that the command stops after the store step, before serving
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", f"tracking.uri=sqlite:///{tmp_path}/new/mlflow.db", f"port={port}"]) == 2
        assert not (tmp_path / "new").exists()
        assert "no MLflow store at" in capsys.readouterr().err
        assert main(["ui", f"tracking.uri=sqlite:///{tmp_path}/new/mlflow.db", f"port={port}", "create=true"]) == 2
    assert "cannot listen" in capsys.readouterr().err  # the store step passed: not refused for the path
    assert not (tmp_path / "new" / "mlflow.db").exists()  # nothing created while the address was taken


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine with a GPU takes trainer.accelerator=gpu")
def test_gpu_on_a_cpu_machine_is_refused_before_a_run_opens(tmp_path, capsys):
    """Lightning refused it only after the MLflow run was open: a FAILED run was logged."""
    from opsd_platform.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["train", "model=tiny", "trainer.max_steps=1", "trainer.accelerator=gpu", f"tracking.uri={uri}"]) == 2
    assert one_line(capsys.readouterr().err) == (
        "opsd train: trainer.accelerator=gpu: no CUDA GPU is visible to this process; use trainer.accelerator=cpu "
        "(or auto: a GPU when there is one)")
    assert runs_logged(tmp_path / "mlflow.db") == 0


def test_help_into_a_pipe_closed_early_is_quiet(tmp_path):
    """`opsd train --help | head -1`: the reader stops after a line; no BrokenPipeError."""
    proc = subprocess.Popen(OPSD + ["train", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "OPSD_HOME": str(tmp_path)})
    proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert err == ""


@pytest.mark.parametrize("program,args", CASES, ids=[" ".join([p.split("/")[-1], *a]) for p, a in CASES])
def test_a_config_error_comes_before_the_heavy_imports(tmp_path, program, args):
    """Every command and pipeline: a config error is one line, exit 2, and neither torch nor MLflow,
    Optuna, Lightning or transformers was imported to find it (the time it saves is measured by
    benchmarks/config_errors.py, which runs these same cases)."""
    seen = probe(program, args, {**os.environ, "OPSD_HOME": str(tmp_path)})
    assert seen["exit"] == 2, seen["stderr"]
    assert len(seen["message"]) == 1 and "Traceback" not in seen["stderr"], seen["stderr"]
    assert seen["imported"] == [], f"{' '.join([program, *args])} imported {seen['imported']} before its config error"
    assert list(tmp_path.iterdir()) == [], "a config error left files in OPSD_HOME"


def test_ctrl_c_exits_130_with_the_resume_command_that_works(tmp_path):
    """Ctrl-C mid-training: exit 130, the run FAILED with its checkpoint, and the last line is the
    command that continues it; a re-run of the configuration is told of it; the command resumes."""
    from mlflow.tracking import MlflowClient

    from opsd_platform.config.compose import train_config
    from opsd_platform.training.resume import interrupted_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["train", "model=tiny", "trainer.max_steps=12", "trainer.checkpoint_every=2", "trainer.progress_bar=false",
            f"tracking.uri={uri}"]
    env = {**os.environ, "OPSD_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(OPSD + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not list((tmp_path / "checkpoints").glob("*/step-000002/meta.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"opsd train: interrupted \(SIGINT\): run (\w+) is FAILED with a checkpoint at step (\d+); "
                     r"continue it: opsd train (.*) resume=(\w+)", last)
    assert m and m.group(1) == m.group(4) and m.group(3) == " ".join(args[1:]), last
    run_id, step = m.group(1), int(m.group(2))
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"

    assert interrupted_runs(train_config(args[1:])) == [(run_id, step)]  # what a re-run warns about

    resumed = opsd(args + [f"resume={run_id}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and "improvement" in run.data.metrics
    assert interrupted_runs(train_config(args[1:])) == []
