"""Distributed and parallel runs through the real entry points: DDP on two CPU processes (trainer=ddp_cpu, the
code path of trainer=ddp on GPUs) and Hydra launchers for -m sweeps (submitit, joblib).

Each run is a subprocess under a timeout, so a deadlocked collective fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_classifier, write_tiny_bert

TIMEOUT = 300


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # a test run inside a distributed job must not join it
    # Its own process group: on a timeout the DDP rank Lightning started is killed with it.
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{args[0]} did not finish in {TIMEOUT} s (deadlock?):\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_bert, synthetic_data_dir) -> Path:
    """Three different tiny classifiers, tiny_ref, tiny_cand and tiny_cand2, in ``<ws>/models/sst2``."""
    ws = tmp_path_factory.mktemp("distributed")
    write_classifier(tiny_bert, ws / "models" / "sst2" / "tiny_ref")
    other = write_tiny_bert(ws / "tiny_other", seed=1)
    write_classifier(other, ws / "models" / "sst2" / "tiny_cand")
    write_classifier(write_tiny_bert(ws / "tiny_third", seed=2), ws / "models" / "sst2" / "tiny_cand2")
    return ws


def _overrides(ws: Path, tiny: Path, data: Path, name: str, *extra: str) -> list[str]:
    """Evaluation overrides on the tiny models; ``name``: this run's cache, output and log dirs."""
    return [
        "task=sst2",
        "model=minilm",
        "model@reference=minilm",
        f"model.pretrained={tiny}",
        f"reference.pretrained={tiny}",
        "reference.name=tiny_ref",
        "model.name=tiny_cand",
        f"paths.data_dir={data}",
        f"paths.models_dir={ws / 'models'}",
        f"paths.cache_dir={ws / name / 'cache'}",
        f"paths.log_dir={ws / name / 'logs'}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "task.max_length=32",
        "++noise_floor.seeds=[]",
        "predict.batch_size=8",  # several batches per rank
        *extra,
    ]


def test_ddp_cpu_predictions_equal_one_process(workspace, tiny_bert, synthetic_data_dir):
    runs = {}
    for trainer in ("cpu", "ddp_cpu"):
        args = _overrides(workspace, tiny_bert, synthetic_data_dir, trainer, f"trainer={trainer}")
        args.append(f"paths.output_dir={workspace / trainer / 'run'}")
        proc = _run([str(REPO / "evaluate.py"), *args], cwd=workspace)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[trainer] = workspace / trainer / "run"
    log = "\n".join(p.read_text() for p in (workspace / "ddp_cpu" / "logs").rglob("*.log"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # really two processes
    one, ddp = runs["cpu"], runs["ddp_cpu"]
    csvs = sorted(p.relative_to(one) for p in one.rglob("*.csv"))
    assert Path("predictions/tiny_ref.csv") in csvs and Path("predictions/tiny_cand.csv") in csvs
    for rel in csvs:
        # Rank r takes batches r, r+2, ... of the same length-sorted batches: each row is computed in the
        # same batch as in one process, so logits are bit-identical, not just close.
        assert (ddp / rel).read_text() == (one / rel).read_text(), rel
    m_one = json.loads((one / "results.json").read_text())["metrics"]
    m_ddp = json.loads((ddp / "results.json").read_text())["metrics"]
    assert m_one == m_ddp


def test_ddp_cpu_fine_tuning_leaves_one_checkpoint(workspace, tiny_bert, synthetic_data_dir):
    models = workspace / "ddp_train" / "models"
    args = _overrides(
        workspace,
        tiny_bert,
        synthetic_data_dir,
        "ddp_train",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "task.training.batch_size=16",
        "train_missing=true",
        f"paths.models_dir={models}",
        f"paths.output_dir={workspace / 'ddp_train' / 'run'}",
    )
    proc = _run([str(REPO / "evaluate.py"), *args], cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("tiny_ref", "tiny_cand"):
        assert (models / "sst2" / name / "model.safetensors").exists()
        assert not (models / "sst2" / f"{name}.training").exists()
    assert sorted(p.name for p in (models / "sst2").iterdir() if p.is_dir()) == ["tiny_cand", "tiny_ref"]
    assert (workspace / "ddp_train" / "run" / "results.json").exists()


@pytest.mark.parametrize("launcher", ["submitit_local", "parallel"])
def test_sweep_launcher_jobs_share_one_cache(launcher, workspace, tiny_bert, synthetic_data_dir):
    """Two jobs at once on one cache and models dir: both finish, the reference is computed once."""
    plugin = {"submitit_local": "hydra_submitit_launcher", "parallel": "hydra_joblib_launcher"}[launcher]
    pytest.importorskip(f"hydra_plugins.{plugin}", reason="install the slurm / parallel extra")
    name = f"sweep_{launcher}"
    args = _overrides(workspace, tiny_bert, synthetic_data_dir, name, "trainer=cpu")
    args = [a for a in args if not a.startswith("model.name=")]
    args += ["model.name=tiny_cand,tiny_cand2", f"hydra/launcher={launcher}"]
    if launcher == "submitit_local":
        args.append("hydra.launcher.timeout_min=5")
    proc = _run([str(REPO / "evaluate.py"), "-m", *args], cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted((workspace / name / "logs" / "evaluate" / "multiruns").glob("*/*/results.json"))
    assert len(found) == 2, proc.stdout[-3000:]
    results = [json.loads(p.read_text()) for p in found]
    assert sorted(r["candidates"][0] for r in results) == ["tiny_cand", "tiny_cand2"]
    assert sorted(r["cached"]["tiny_ref/test"] for r in results) == [False, True]
