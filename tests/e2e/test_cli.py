"""The entry points as a user runs them: train.py, evaluate.py, a -m sweep, and W&B offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def _common(tmp: Path, tiny: Path, data: Path) -> list[str]:
    return [
        "task=sst2",
        "model=minilm",
        f"model.pretrained={tiny}",
        "model.name=tiny",
        f"paths.data_dir={data}",
        f"paths.models_dir={tmp}/models",
        f"paths.cache_dir={tmp}/cache",
        f"paths.log_dir={tmp}/logs",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "task.max_length=32",
        "task.training.learning_rate=5e-3",
        "task.training.batch_size=16",
        "++noise_floor.seeds=[]",
    ]


def test_train_then_sweep_evaluate(tmp_path, tiny_bert, synthetic_data_dir):
    common = _common(tmp_path, tiny_bert, synthetic_data_dir)
    train = _run([str(REPO / "train.py"), *common, "logger=none"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / "models" / "sst2" / "tiny" / "model.safetensors").exists()
    # Each Lightning log line once: on the console (Hydra's handler) and in the run's log file.
    assert (train.stdout + train.stderr).count("GPU available") == 1, train.stdout + train.stderr
    (log_file,) = (tmp_path / "logs" / "train" / "runs").glob("*/train.log")
    assert log_file.read_text().count("GPU available") == 1

    sweep = _run(
        [
            str(REPO / "evaluate.py"),
            "-m",
            *common,
            "model@reference=minilm",
            f"reference.pretrained={tiny_bert}",
            "reference.name=tiny",
            "compressor=quantize_dynamic,layer_drop",
            "train_missing=true",
            "logger=wandb",
        ],
        cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "evaluate" / "multiruns").glob("*/*/results.json"))
    assert len(runs) == 2
    results = [json.loads(r.read_text()) for r in runs]
    assert {tuple(r["candidates"]) for r in results} == {("tiny+quantize_dynamic",), ("tiny+layer_drop",)}
    # The reference was predicted by the first job and reused from the cache by the second.
    assert [r["cached"]["tiny/test"] for r in results] == [False, True]
    assert (
        results[0]["metrics"]["calibration/tiny/accuracy"]
        == results[1]["metrics"]["calibration/tiny/accuracy"]
    )
    # W&B ran offline, in the run dir, without a prompt
    assert list(runs[0].parent.glob("wandb/offline-run-*"))
    # the jobs print their run dirs; the sweep ends with its own dir, where its results are
    lines = sweep.stdout.strip().splitlines()
    assert Path(lines[-1]) == runs[0].parent.parent
    assert (Path(lines[-1]) / "sweep_results.json").exists()
    assert any(Path(line).name.startswith("1_sst2") for line in lines)


def test_unknown_task_exits_with_the_options(tmp_path):
    bad = _run([str(REPO / "evaluate.py"), "task=no_such_task", f"paths.log_dir={tmp_path}"], cwd=tmp_path)
    assert bad.returncode == 2  # a known failure: one line (tests/core/test_errors.py), not a traceback
    assert bad.stderr.startswith("error: unknown task 'no_such_task'") and "mnli" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_sigterm_stops_training_and_moves_no_checkpoint(tiny_bert, synthetic_data_dir, tmp_path):
    """What schedulers and ``kill`` send: fine-tuning stops within a batch and leaves no finished model."""
    import signal
    import time

    args = [*_common(tmp_path, tiny_bert, synthetic_data_dir), "trainer.max_epochs=100000"]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args, "logger=none"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    staging = tmp_path / "models" / "sst2" / "tiny.training"
    deadline = time.time() + 120
    while not (staging / "config.json").exists():  # training, past its first validation
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate()[0][-3000:])
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    try:
        err, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("fine-tuning ignored SIGTERM") from None
    assert proc.returncode == 143, err[-3000:]  # 128 + SIGTERM: not mistaken for success
    assert "SIGTERM received" in err
    assert not (tmp_path / "models" / "sst2" / "tiny").exists()
