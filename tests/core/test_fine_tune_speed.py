"""Fine-tuning speed (benchmarks/fine_tune.py) without changing what is trained: the fused AdamW default
equals the for-loop AdamW it replaced up to float rounding, padding each batch to its longest sequence equals
padding it to max_length, the opt-in ``trainer.precision=bf16-mixed`` trains, and the benchmark runs.
Tiny models, a few steps; no wall-clock assertion."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import REPO, compose, tiny_overrides
from lightning.pytorch.callbacks import Callback

from plugins.tasks.classification import RECIPE, fit_inputs, new_classifier
from trustequiv.models.spec import ModelSpec
from trustequiv.plain import plain
from trustequiv.run import pipeline
from trustequiv.train.trainer import make_trainer

STEPS = 6
MAX_LENGTH = 32


class _Record(Callback):
    """Each step's loss and, at the end, the weights and the optimizer."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.final: dict[str, torch.Tensor] = {}
        self.optimizer = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, module) -> None:
        self.final = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        self.optimizer = trainer.optimizers[0]


class _PadToMaxLength:
    """The old padding: the datamodule's batches padded on to ``max_length``."""

    def __init__(self, collate, max_length: int):
        self.collate, self.max_length = collate, max_length

    def __call__(self, examples):
        batch = self.collate(examples)
        pad = self.max_length - batch["input_ids"].shape[1]
        return {k: torch.nn.functional.pad(v, (0, pad)) if v.ndim == 2 else v for k, v in batch.items()}


@pytest.fixture(scope="module")
def setup(tiny_bert, synthetic_data_dir, tmp_path_factory):
    """The train config's task and trainer, the tiny classifier with a new head (its initial weights) and
    the fine-tuning's datamodule (the task's fit_inputs)."""
    tmp = tmp_path_factory.mktemp("speed")
    cfg = compose("train", tiny_overrides(tmp, tiny_bert, synthetic_data_dir))
    task_cfg, trainer_cfg = plain(cfg.task), plain(cfg.trainer)
    model, tokenizer = new_classifier(ModelSpec(name="tiny", pretrained=str(tiny_bert)), task_cfg)
    datamodule = fit_inputs(pipeline.load_task_data(cfg), tokenizer, task_cfg, seed=0)["datamodule"]
    return task_cfg, trainer_cfg, model, {k: v.clone() for k, v in model.state_dict().items()}, datamodule


def _set_dropout(model, p: float) -> None:
    """Every dropout of the BERT classifier: its ``nn.Dropout`` modules and SDPA attention's probability."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if hasattr(m, "dropout_prob"):  # BertSdpaSelfAttention passes it to scaled_dot_product_attention
            m.dropout_prob = p


def _fit(setup, *, fused=None, precision=None, collate=None, dropout=True, steps=STEPS) -> _Record:
    """``steps`` optimizer steps of the fine-tuning module from the initial weights, seed 0."""
    task_cfg, trainer_cfg, model, initial, datamodule = setup
    model.load_state_dict(initial)
    _set_dropout(model, 0.1 if dropout else 0.0)  # the tiny BERT's (BertConfig's default), or none
    module = RECIPE.make_module(model, task_cfg)
    if fused is not None:
        module.fused_adamw = fused
    model.train()
    record = _Record()
    overrides = dict(max_steps=steps, limit_val_batches=0, enable_checkpointing=False, callbacks=[record])
    if precision:
        overrides["precision"] = precision
    trainer = make_trainer(trainer_cfg, **overrides)
    default_collate = datamodule.collate
    datamodule.collate = collate(default_collate) if collate else default_collate
    torch.manual_seed(0)
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        datamodule.collate = default_collate
    assert len(record.losses) == steps
    return record


def _assert_close_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        # Relative to each tensor's size, at least 1e-6 (6 steps move the weights by about 3e-3): attention
        # key biases start at 0 and get a zero gradient up to rounding (a softmax ignores a shift), so their
        # values are rounding through Adam's normalisation, no scale to be relative to.
        atol = 1e-6 * max(float(w.abs().max()), 1.0)
        torch.testing.assert_close(got[name], w, rtol=rtol, atol=atol, msg=name)


def test_fused_adamw_is_opt_in_and_trains_as_the_for_loop_one(setup):
    """The default optimizer is the for-loop AdamW (checkpoints as before); the opt-in fused kernel gives,
    in a few steps, its losses and weights (same batches, seed and dropout masks) up to float rounding."""
    default, loop = _fit(setup, fused=True), _fit(setup)
    assert default.optimizer.param_groups[0]["fused"] is True
    assert not loop.optimizer.param_groups[0]["fused"]
    torch.testing.assert_close(default.losses, loop.losses, rtol=1e-5, atol=1e-6)
    _assert_close_weights(default.final, loop.final, rtol=1e-4)
    moved = max(float((default.final[k] - v).abs().max()) for k, v in setup[3].items())
    assert moved > 1e-4  # it trained: the comparison is not of two untouched models


def test_padding_to_the_longest_trains_as_padding_to_max_length(setup):
    """What fine-tuning pads (each batch to its longest sequence) trains as padding every batch to
    max_length did: same losses and weights up to float rounding. Without dropout, whose masks are drawn
    per padded position."""
    longest = _fit(setup, dropout=False)
    padded = _fit(setup, dropout=False, collate=lambda c: _PadToMaxLength(c, MAX_LENGTH))
    torch.testing.assert_close(longest.losses, padded.losses, rtol=1e-5, atol=1e-6)
    _assert_close_weights(longest.final, padded.final, rtol=1e-4)


def test_bf16_mixed_is_opt_in_and_trains(setup):
    """``trainer.precision=bf16-mixed`` runs with the for-loop AdamW (Lightning refuses gradient clipping
    with a fused optimizer under mixed precision), moves the weights, and its first loss (no update yet) is
    the fp32 one up to bfloat16 rounding; fp32 stays the default."""
    fp32 = _fit(setup, steps=2)
    bf16 = _fit(setup, precision="bf16-mixed")
    assert not bf16.optimizer.param_groups[0]["fused"]
    assert all(torch.isfinite(torch.tensor(bf16.losses)))
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], abs=0.05)
    assert bf16.losses[0] != fp32.losses[0]  # it did compute in bfloat16
    moved = max(float((bf16.final[k] - v).abs().max()) for k, v in setup[3].items())
    assert moved > 1e-4
    assert all(v.dtype == setup[3][k].dtype for k, v in bf16.final.items())  # weights stay fp32
    assert setup[1]["precision"] == "32-true"  # trainer=cpu's


def test_bf16_mixed_through_the_config_fine_tunes_a_checkpoint(tiny_bert, synthetic_data_dir, tmp_path):
    """The option as a user sets it: ``train.py ... trainer.precision=bf16-mixed`` writes a checkpoint."""
    overrides = tiny_overrides(
        tmp_path, tiny_bert, synthetic_data_dir, "trainer.precision=bf16-mixed", "trainer.max_epochs=1"
    )
    pipeline.train(
        compose("train", [o for o in overrides if not o.startswith(("model@reference", "reference."))])
    )
    out = tmp_path / "models" / "sst2" / "tiny_cand"
    meta = json.loads((out / "trustequiv.json").read_text())
    assert (out / "model.safetensors").exists() and meta["epochs_run"] == 1 and 0 <= meta["best_val_acc"] <= 1


def _benchmark():
    """benchmarks/fine_tune.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fine_tune_benchmark", REPO / "benchmarks" / "fine_tune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_runs_in_tiny_mode(tiny_bert, synthetic_data_dir, capsys):
    """benchmarks/fine_tune.py, every way, two steps on the tiny model: figures for each, printed."""
    bench = _benchmark()
    ways = ["loop", "fused", "bf16", "bare", "max_length"]
    argv = ["--pretrained", str(tiny_bert), "--task", "sst2", "--data-dir", str(synthetic_data_dir)]
    argv += ["--max-length", str(MAX_LENGTH), "--steps", "2", "--warmup", "1", "--rounds", "1"]
    summary = bench.main([*argv, "--ways", ",".join(ways)])
    assert list(summary) == ways
    for figures in summary.values():
        assert all(value > 0 for value in figures.values())
        assert figures["padded_tokens_per_s"] >= figures["real_tokens_per_s"]

    def padding(way: str) -> float:
        return summary[way]["padded_tokens_per_s"] / summary[way]["real_tokens_per_s"]

    assert padding("max_length") > padding("fused") >= 1.0
    out = capsys.readouterr().out
    assert "ratio" in out and "speed-up fused / loop" in out and "bound ex/s" in out


def test_benchmark_counts_gemm_flops():
    """The bound's FLOP count: padding counts in the padded figure only."""
    bench = _benchmark()

    class Config:
        hidden_size, intermediate_size, num_hidden_layers = 4, 8, 2

    padded, real = bench.forward_flops(Config, [3, 5], width=5, num_labels=2)
    per_token = 2 * 2 * (4 * 16 + 2 * 4 * 8)
    attention = lambda t: 2 * 2 * 2 * t * t * 4  # noqa: E731
    per_sequence = 2 * (16 + 8)
    assert real == 8 * per_token + attention(3) + attention(5) + 2 * per_sequence
    assert padded == 10 * per_token + 2 * attention(5) + 2 * per_sequence
