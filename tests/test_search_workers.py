"""Several `opsd search` worker processes on one study in a real PostgreSQL server: nothing lost or
run twice; a worker killed with SIGKILL mid-trial has its trial failed by heartbeat and re-run.

The server is started here (a throw-away cluster: initdb in a temp dir, a free port, stopped
after); the tests skip, saying why, only when PostgreSQL's server binaries are not installed
(.ci/run installs them with apt-get when `initdb` is missing)."""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from opsd_platform.cli import main
from opsd_platform.law.pipeline import fit_and_register
from opsd_platform.law.settings import FitLawConfig

from test_calibrate import log_points
from test_search import FAST, LAW_POINTS

pytestmark = pytest.mark.slow  # a PostgreSQL server and worker processes: 2-4 minutes each


def pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """postgresql+psycopg2:// URL of a database on a fresh, private PostgreSQL server."""
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 (the dev extra) is needed to reach PostgreSQL")
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; `.ci/run` installs them")
    as_user = {}
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the packaged `postgres` user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    root = Path(tempfile.mkdtemp(prefix="opsd-pg-"))
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    data, port = root / "data", free_port()
    run = lambda *cmd: subprocess.run([str(c) for c in cmd], check=True, capture_output=True, cwd=root, **as_user)  # noqa: E731
    try:
        run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr.decode()[-2000:]}") from None
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True, cwd=root, **as_user)
        shutil.rmtree(root, ignore_errors=True)


def start_worker(args, log: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "OPSD_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "opsd_platform.cli", "search", *args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def law_store(tmp_path) -> str:
    """A store with a registered law, and a small space file beside it (tmp_path/space.yaml)."""
    (tmp_path / "space.yaml").write_text("space:\n  context: {type: categorical, choices: [none, feedback, reference]}\n"
                                         "  rollout.samples_per_prompt: {type: categorical, choices: [2, 3]}\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log_points(uri, LAW_POINTS)
    fit_and_register(uri, FitLawConfig(out_dir=str(tmp_path / "law")))
    return uri


def child_runs(uri: str, study: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("opsd")
    parent = client.search_runs([exp.experiment_id], f"tags.kind = 'search' AND tags.`search.study` = '{study}'")
    assert len(parent) == 1
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'", max_results=1000)
    return client, parent[0], children


def final_trials(study):
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.number not in retried)]


def test_two_workers_share_a_postgres_study_without_losing_or_repeating_trials(postgres, tmp_path):
    uri = law_store(tmp_path)
    n = 4
    args = [*FAST, f"tracking.uri={uri}", f"search.storage={postgres}", "search.study=shared", f"search.n_trials={n}",
            f"search.space={tmp_path}/space.yaml",
            "search.n_startup_trials=2", "search.calibration_rate=0", "search.refit_every=0",
            "search.heartbeat_interval=2", "search.grace_period=20", f"search.out_dir={tmp_path}/report"]
    assert main(["search", *args, "search.prepare_only=true"]) == 0  # schema, study, parent run: once
    workers = [start_worker(args, tmp_path / f"w{i}.log", tmp_path) for i in range(2)]
    for i, w in enumerate(workers):
        assert w.wait(timeout=500) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]

    study = optuna.load_study(study_name="shared", storage=postgres)
    trials = study.trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert n <= len(trials) <= n + 1  # two workers asking at the same instant may start one extra
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    _, parent, children = child_runs(uri, "shared")
    assert sorted(int(r.data.tags["search.trial"]) for r in children) == [t.number for t in trials]  # one run each
    assert all(r.info.status == ("KILLED" if r.data.tags["search.state"] == "PRUNED" else "FINISHED") for r in children)
    assert parent.info.status == "FINISHED" and parent.data.metrics["search/n_trials"] == len(trials)
    assert (tmp_path / "report" / "report.html").exists()


def test_sigkill_of_a_worker_mid_trial_is_failed_by_heartbeat_and_retried(postgres, tmp_path):
    uri = law_store(tmp_path)
    n = 4
    args = [*FAST, "trainer.max_steps=4", f"tracking.uri={uri}", f"search.storage={postgres}", "search.study=crash",
            f"search.space={tmp_path}/space.yaml",
            f"search.n_trials={n}", "search.pruner=none", "search.heartbeat_interval=1", "search.grace_period=8",
            f"search.out_dir={tmp_path}/report"]
    assert main(["search", *args, "search.prepare_only=true"]) == 0
    victim, survivor = (start_worker(args, tmp_path / f"{name}.log", tmp_path) for name in ("victim", "survivor"))
    me = f"{socket.gethostname()}:{victim.pid}"
    study = optuna.load_study(study_name="crash", storage=postgres)
    deadline, killed = time.time() + 300, None
    while time.time() < deadline and killed is None:  # wait until the victim is training a trial
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker") == me and "mlflow_run_id" in t.user_attrs:
                os.kill(victim.pid, signal.SIGKILL)
                killed = t.number
                break
        assert victim.poll() is None or killed is not None, (tmp_path / "victim.log").read_text()[-3000:]
        time.sleep(0.3)
    assert killed is not None, "the victim never started training a trial"
    victim.wait(timeout=30)
    assert survivor.wait(timeout=500) == 0, (tmp_path / "survivor.log").read_text()[-3000:]

    trials = optuna.load_study(study_name="crash", storage=postgres).trials
    dead = trials[killed]
    assert dead.state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == dead.params
    assert "no heartbeat" in retries[0].user_attrs["retry_reason"]
    final = final_trials(optuna.load_study(study_name="crash", storage=postgres))
    assert n <= len(final) <= n + 1 and all(t.state == TrialState.COMPLETE for t in final)  # every trial accounted for
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    client, parent, children = child_runs(uri, "crash")
    by_trial = {}
    for r in children:
        by_trial.setdefault(int(r.data.tags["search.trial"]), []).append(r)
    assert sorted(by_trial) == [t.number for t in trials] and all(len(v) == 1 for v in by_trial.values())
    lost = by_trial[killed][0]
    assert lost.info.status == "FAILED" and "no heartbeat" in lost.data.tags["failure_reason"]
    assert by_trial[retries[0].number][0].data.tags["search.retry_of"] == str(killed)
    assert all(r.info.status == "FINISHED" for num, (r,) in by_trial.items() if num != killed)
    # the parent run is intact: finished, with the report and the totals of every trial
    assert parent.info.status == "FINISHED" and parent.data.metrics["search/n_trials"] == len(trials)
    assert parent.data.metrics["search/n_failed"] == 1 and parent.data.metrics["search/n_complete"] == len(final)
    assert "report/report.html" in {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
