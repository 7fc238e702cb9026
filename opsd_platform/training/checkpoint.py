"""Training checkpoints on disk: atomic save, listing, pruning, resolving ``resume=``, RNG states.

Layout (``trainer.checkpoint_dir``, by default ``checkpoints/`` beside a local SQLite store, else
``$OPSD_HOME/checkpoints``)::

    <root>/<mlflow run id>/step-000010/state.pt    tensors: weights or adapter, optimizer, teacher, RNG
                                      /meta.json   step, run id, config, counters, pending metrics

A checkpoint is written into a hidden temporary directory, each file flushed to disk, and then
renamed into place with ``os.replace``: a reader (or a resume after SIGKILL) sees a complete
checkpoint or none. ``state.pt`` holds only tensors, numbers, strings and containers, so it is
read back with ``torch.load(weights_only=True)`` (no pickled code runs on load).

Everything here is plain functions on paths and dicts; the trainer decides what goes in.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from opsd_platform.errors import CheckpointError

STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # .../<run id>/step-000010
    step: int

    @property
    def run_id(self) -> str:
        return str(self.meta()["run_id"])

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / META_FILE).read_text())

    def state(self) -> dict[str, Any]:
        return torch.load(self.path / STATE_FILE, map_location="cpu", weights_only=True)


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """The complete checkpoints of one run, oldest first (unfinished temporary dirs are ignored)."""
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / META_FILE).is_file() and (child / STATE_FILE).is_file():
            found.append(Checkpoint(child, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(run_dir: Path, step: int, state: Mapping[str, Any], meta: Mapping[str, Any]) -> Checkpoint:
    """Write checkpoint `step` of a run atomically; an existing one of the same step is replaced."""
    run_dir.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / STATE_FILE, "wb") as fh:
        torch.save(dict(state), fh)
        fh.flush()
        os.fsync(fh.fileno())
    meta = {**meta, "step": step, "format": FORMAT_VERSION, "saved_at": time.time()}
    with open(tmp / META_FILE, "w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    final = run_dir / name
    old = None
    if final.exists():  # e.g. a resume from an earlier checkpoint passing this step again
        old = run_dir / f".{name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return Checkpoint(final, step)


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, and temporary dirs left by dead writers."""
    removed = []
    for ckpt in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(ckpt.path, ignore_errors=True)
        removed.append(ckpt.path)
    for child in run_dir.glob(".step-*.*-*") if run_dir.is_dir() else []:
        pid = child.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(child, ignore_errors=True)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_root(root: Path) -> str:
    """One line on what `root` holds, for error messages."""
    runs = []
    if root.is_dir():
        for run_dir in sorted(root.iterdir()):
            steps = [c.step for c in list_checkpoints(run_dir)]
            if steps:
                runs.append(f"{run_dir.name} (steps {', '.join(map(str, steps))})")
    if not runs:
        return f"no run has a checkpoint under {root}"
    return f"runs with checkpoints under {root}: " + "; ".join(runs)


def resolve(resume: str, root: Path) -> Checkpoint:
    """The checkpoint `resume=` names: a checkpoint directory, a run's checkpoint directory (its
    newest checkpoint), or an MLflow run id looked up under `root` (its newest checkpoint)."""
    path = Path(resume).expanduser()
    if path.exists():
        path = path.resolve()
        if (path / META_FILE).is_file():
            m = _STEP_DIR.match(path.name)
            if not m or not (path / STATE_FILE).is_file():
                raise CheckpointError(f"resume={resume}: {path} is not a complete checkpoint (step-NNNNNN with "
                                      f"{STATE_FILE} and {META_FILE})")
            return Checkpoint(path, int(m.group(1)))
        found = list_checkpoints(path)
        if found:
            return found[-1]
        raise CheckpointError(f"resume={resume}: {path} holds no checkpoint (no step-NNNNNN/{META_FILE}); "
                              f"{describe_root(path.parent)}")
    if "/" in resume or resume.startswith("."):
        raise CheckpointError(f"resume={resume}: no such file or directory")
    found = list_checkpoints(root / resume)
    if not found:
        raise CheckpointError(f"resume={resume}: run {resume} has no checkpoint under {root}; {describe_root(root)}")
    return found[-1]


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, and CUDA when in use) generator states, as tensors and numbers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- digests


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names and exact bytes of a name -> tensor mapping (any dtype or device)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
