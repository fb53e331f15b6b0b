"""A killed fine-tuning resumes from its last Lightning checkpoint (issue 13, item 2), not from scratch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import compose, tiny_overrides
from safetensors.torch import load_file

from trustequiv.run import pipeline
from trustequiv.train import fine_tune as training

EPOCHS = 3


def _train_cfg(tmp: Path, tiny: Path, data: Path, *extra: str, epochs: int = EPOCHS):
    overrides = tiny_overrides(tmp, tiny, data, f"trainer.max_epochs={epochs}", *extra, candidate="tiny")
    return compose("train", [o for o in overrides if not o.startswith(("model@reference", "reference."))])


def _out(tmp: Path) -> Path:
    return tmp / "models" / "sst2" / "tiny"


class Record:
    """What the fine-tunings from now on run: ``(epoch, global_step)`` at the start of every training epoch,
    the weights at the end of the last (the best checkpoint may be an earlier epoch's)."""

    def __init__(self, monkeypatch):
        self.epochs: list[tuple[int, int]] = []
        self.final: dict[str, torch.Tensor] = {}
        self.batches_per_epoch = 0

        def on_train_epoch_start(callback, trainer, module):
            self.epochs.append((trainer.current_epoch, trainer.global_step))
            self.batches_per_epoch = trainer.num_training_batches

        def on_train_end(callback, trainer, module):
            self.final = {k: v.detach().clone() for k, v in module.model.state_dict().items()}

        for hook in (on_train_epoch_start, on_train_end):
            monkeypatch.setattr(training.ResumeState, hook.__name__, hook, raising=False)


def _kill_after_first_epoch(monkeypatch) -> None:
    """Die at the end of epoch 0, once last.ckpt holds it (ModelCheckpoint's own epoch-end hook saves it)."""
    real = training.ModelCheckpoint.on_train_epoch_end

    def dying(self, trainer, module):
        real(self, trainer, module)
        if trainer.current_epoch == 0:
            raise RuntimeError("killed")

    monkeypatch.setattr(training.ModelCheckpoint, "on_train_epoch_end", dying)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_killed_fine_tuning_resumes_where_it_stopped(
    tiny_bert, synthetic_data_dir, tmp_path, monkeypatch, caplog
):
    """Killed after epoch 1 of 3, the same command trains epochs 2 and 3 only and ends where an uninterrupted
    run of the same seed does."""
    caplog.set_level(logging.INFO, logger="trustequiv.train.fine_tune")
    full_tmp, killed_tmp = tmp_path / "full", tmp_path / "killed"
    record = Record(monkeypatch)
    pipeline.train(_train_cfg(full_tmp, tiny_bert, synthetic_data_dir))
    full_final, steps_per_epoch = record.final, record.batches_per_epoch
    assert record.epochs == [(0, 0), (1, steps_per_epoch), (2, 2 * steps_per_epoch)]

    cfg = _train_cfg(killed_tmp, tiny_bert, synthetic_data_dir)
    with monkeypatch.context() as m:
        _kill_after_first_epoch(m)
        with pytest.raises(RuntimeError, match="killed"):
            pipeline.train(cfg)
    staging = killed_tmp / "models" / "sst2" / "tiny.training"
    last = staging / training.RESUME_DIR / training.LAST_CHECKPOINT
    assert last.exists() and (staging / "config.json").exists() and not _out(killed_tmp).exists()
    killed_state = torch.load(last, weights_only=True)["callbacks"]["BestHFCheckpoint"]

    restored: list[dict] = []
    real_load = training.BestHFCheckpoint.load_state_dict

    def recording_load(self, state_dict):
        restored.append(dict(state_dict))
        real_load(self, state_dict)

    monkeypatch.setattr(training.BestHFCheckpoint, "load_state_dict", recording_load)
    record.epochs.clear()
    caplog.clear()
    pipeline.train(cfg)

    # It says so, runs only epochs 1 and 2 from the step epoch 0 ended at, and keeps the best of epoch 0.
    resumed = [r.getMessage() for r in caplog.records if "resuming fine-tuning" in r.getMessage()]
    assert resumed == [f"resuming fine-tuning of tiny on sst2 from epoch 1, step {steps_per_epoch} ({last})"]
    assert record.epochs == [(1, steps_per_epoch), (2, 2 * steps_per_epoch)]
    assert restored == [killed_state] and killed_state["best_epoch"] == 0
    assert not staging.exists() and not (_out(killed_tmp) / training.RESUME_DIR).exists()

    # Same seed, same result: batch order (seed + epoch), dropout and loader seeds (the RNG states saved with
    # last.ckpt) continue as in the uninterrupted run, and the best checkpoint is chosen over all 3 epochs.
    # Bit-identical here on CPU; the tolerance, scaled to each tensor's size, leaves room for kernels whose
    # float sums are not reproducible run to run (some GPU ops), which no resume can make identical.
    full_meta = json.loads((_out(full_tmp) / "trustequiv.json").read_text())
    meta = json.loads((_out(killed_tmp) / "trustequiv.json").read_text())
    assert meta["resumed_from"] == {"epochs_done": 1, "step": steps_per_epoch}
    assert meta["epochs_run"] == full_meta["epochs_run"] == EPOCHS
    assert (meta["best_epoch"], meta["best_val_acc"]) == (full_meta["best_epoch"], full_meta["best_val_acc"])
    _assert_same_weights(record.final, full_final)
    _assert_same_weights(_weights(_out(killed_tmp)), _weights(_out(full_tmp)))


def _assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, want in expected.items():
        scale = float(want.abs().max()) or 1.0
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6 * scale, msg=name)


def test_staged_run_of_other_settings_starts_over(
    tiny_bert, synthetic_data_dir, tmp_path, monkeypatch, caplog
):
    """A staged last.ckpt from a run with another learning rate is not resumed: all epochs run anew."""
    caplog.set_level(logging.INFO, logger="trustequiv.train.fine_tune")
    with monkeypatch.context() as m:
        _kill_after_first_epoch(m)
        with pytest.raises(RuntimeError, match="killed"):
            pipeline.train(_train_cfg(tmp_path, tiny_bert, synthetic_data_dir))
    staging = tmp_path / "models" / "sst2" / "tiny.training"
    assert (staging / training.RESUME_DIR / training.LAST_CHECKPOINT).exists()

    record = Record(monkeypatch)
    caplog.clear()
    pipeline.train(_train_cfg(tmp_path, tiny_bert, synthetic_data_dir, "task.training.learning_rate=2e-3"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("made with other settings (task differ): starting over" in msg for msg in messages), messages
    assert not any("resuming" in msg for msg in messages)
    assert [e for e, _ in record.epochs] == [0, 1, 2] and record.epochs[0][1] == 0
    meta = json.loads((_out(tmp_path) / "trustequiv.json").read_text())
    assert "resumed_from" not in meta and meta["training"]["learning_rate"] == 2e-3


def test_compressed_model_is_rebuilt_before_its_weights_are_restored(
    tiny_bert, synthetic_data_dir, tmp_path, monkeypatch, caplog
):
    """layer_drop's compress step runs again on resume: last.ckpt's one-layer weights need one-layer BERT."""
    caplog.set_level(logging.INFO, logger="trustequiv.train.fine_tune")
    pipeline.train(_train_cfg(tmp_path, tiny_bert, synthetic_data_dir, epochs=1))  # the base, 2 layers
    cfg = _train_cfg(tmp_path, tiny_bert, synthetic_data_dir, "compressor=layer_drop", epochs=2)
    with monkeypatch.context() as m:
        _kill_after_first_epoch(m)
        with pytest.raises(RuntimeError, match="killed"):
            pipeline.train(cfg)
    record = Record(monkeypatch)
    caplog.clear()
    pipeline.train(cfg)
    assert any("resuming fine-tuning of tiny+layer_drop" in r.getMessage() for r in caplog.records)
    assert [e for e, _ in record.epochs] == [1]
    out = tmp_path / "models" / "sst2" / "tiny+layer_drop"
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert {k for k in record.final if ".layer." in k} == {k for k in record.final if ".layer.0." in k}


def test_best_checkpoint_staged_after_the_resume_point_counts(tmp_path):
    """Killed after saving a better epoch's weights, before last.ckpt: the staged weights are the best."""
    staging = tmp_path / "tiny.training"
    staging.mkdir()
    (staging / "trustequiv.json").write_text(json.dumps({"best_val_acc": 0.9, "best_epoch": 2}))
    best = training.BestHFCheckpoint(staging, tokenizer=None)
    best.load_state_dict({"best": 0.8, "best_epoch": 1})
    assert (best.best, best.best_epoch) == (0.9, 2)
    (staging / "trustequiv.json").write_text(json.dumps({"best_val_acc": 0.8, "best_epoch": 1}))
    best.load_state_dict({"best": 0.8, "best_epoch": 1})
    assert (best.best, best.best_epoch) == (0.8, 1)


def test_step_checkpoints_resume_mid_epoch(tiny_bert, synthetic_data_dir, tmp_path, monkeypatch, caplog):
    """``training.checkpoint_every_n_steps``: a kill mid-epoch resumes at the last step checkpoint and runs
    the epoch's remaining number of steps."""
    caplog.set_level(logging.INFO, logger="trustequiv.train.fine_tune")
    cfg = _train_cfg(
        tmp_path, tiny_bert, synthetic_data_dir, "+task.training.checkpoint_every_n_steps=4", epochs=2
    )
    real = training.ModelCheckpoint.on_train_batch_end

    def dying(self, trainer, module, *args):
        real(self, trainer, module, *args)
        if trainer.global_step == 6:
            raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(training.ModelCheckpoint, "on_train_batch_end", dying)
        with pytest.raises(RuntimeError, match="killed"):
            pipeline.train(cfg)
    record = Record(monkeypatch)
    caplog.clear()
    pipeline.train(cfg)
    last = tmp_path / "models" / "sst2" / "tiny.training" / training.RESUME_DIR / training.LAST_CHECKPOINT
    resumed = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert resumed == [f"resuming fine-tuning of tiny on sst2 from epoch 0, step 4 ({last})"]
    # Epoch 0 ran its remaining steps only: epoch 1 starts where an uninterrupted run's would.
    assert record.epochs == [(1, record.batches_per_epoch)] and record.batches_per_epoch > 6
    meta = json.loads((_out(tmp_path) / "trustequiv.json").read_text())
    assert meta["resumed_from"] == {"epochs_done": 0, "step": 4} and meta["epochs_run"] == 2
