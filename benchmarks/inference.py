"""Backbone benchmark (measured, not asserted), on this machine, in one run:

1. Eval-set inference throughput: length-sorted dynamic padding (what trustequiv does) vs padding every batch
   to ``max_length`` in data order (the naive way), same model, batch size, examples and threads.
2. A second, cached ``evaluate`` run's wall time vs the first (which predicts every model).

    python benchmarks/inference.py [--task mrpc] [--n 1000] [--batch-size 64] [--data-dir ../shared/data]

Uses the fine-tuned ``models/<task>/minilm`` if present, else all-MiniLM-L6-v2 with a fresh head (throughput
does not depend on the head's weights).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


def _throughput(model, batches) -> tuple[float, int]:
    """Seconds for one pass over ``batches`` (after one warm-up batch) and the number of padded tokens."""
    with torch.inference_mode():
        model(**batches[0])
        start = time.perf_counter()
        tokens = 0
        for b in batches:
            model(**b)
            tokens += b["input_ids"].numel()
    return time.perf_counter() - start, tokens


def bench_padding(task: str, n: int, batch_size: int, data_dir: str) -> None:
    from hydra import compose, initialize_config_dir
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trustequiv.config import register_resolvers
    from trustequiv.data.batches import LengthSortedBatchSampler, PadCollator, encode_split
    from trustequiv.run.pipeline import load_task_data

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "evaluate", [f"task={task}", f"paths.data_dir={data_dir}", "paths.output_dir=/tmp/bench"]
        )
    split = load_task_data(cfg)[cfg.task.eval_split]
    split = split.select(range(min(n, len(split))))
    ckpt = REPO / "models" / task / "minilm"
    source = str(ckpt) if (ckpt / "config.json").exists() else cfg.model.get("pretrained")
    if not (ckpt / "config.json").exists():
        from trustequiv.config import minilm_path

        source = minilm_path()
    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(cfg.task.label_names)
    ).eval()
    max_length = int(cfg.task.max_length)
    enc = encode_split(split, tok, pair=bool(cfg.task.pair), max_length=max_length)
    collate = PadCollator(tok)
    keys = ("input_ids", "attention_mask", "token_type_ids")

    def batches(index_lists, pad_to=None):
        out = []
        for idx in index_lists:
            b = collate([enc[i] for i in idx])
            if pad_to is not None:  # the naive way: every batch padded to max_length
                w = b["input_ids"].shape[1]
                b = {
                    k: torch.nn.functional.pad(v, (0, pad_to - w)) if v.ndim == 2 else v for k, v in b.items()
                }
            out.append({k: b[k] for k in keys if k in b})
        return out

    sorted_b = batches(list(LengthSortedBatchSampler(enc.lengths, batch_size)))
    order = list(range(len(enc)))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    naive_b = batches(chunks, pad_to=max_length)
    dynamic_b = batches(chunks)
    t_sorted, tok_sorted = _throughput(model, sorted_b)
    t_dyn, tok_dyn = _throughput(model, dynamic_b)
    t_naive, tok_naive = _throughput(model, naive_b)
    real = sum(enc.lengths)
    print(
        f"\n[1] inference on {len(enc)} {task} {cfg.task.eval_split} examples, batch {batch_size}, "
        f"{torch.get_num_threads()} threads, model {Path(source).name}"
    )
    print(f"    real tokens {real}; max_length {max_length}")
    rows = [
        ("padded to max_length, data order (naive)", t_naive, tok_naive),
        ("dynamic padding, data order", t_dyn, tok_dyn),
        ("length-sorted dynamic padding (trustequiv)", t_sorted, tok_sorted),
    ]
    for name, t, toks in rows:
        print(f"    {name:45s} {len(enc) / t:8.1f} ex/s  {toks:8d} padded tokens  {t:6.2f} s")
    print(
        f"    speed-up length-sorted vs naive: {t_naive / t_sorted:.2f}x; "
        f"vs dynamic unsorted: {t_dyn / t_sorted:.2f}x"
    )


def bench_cache(task: str, n: int, data_dir: str) -> None:
    from hydra import compose, initialize_config_dir

    from trustequiv.config import register_resolvers
    from trustequiv.run.pipeline import evaluate

    register_resolvers()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"task={task}",
            "model=minilm",
            "model@reference=minilm",
            "compressor=quantize_dynamic",
            f"paths.data_dir={data_dir}",
            f"paths.models_dir={tmp}/models",
            f"paths.cache_dir={tmp}/cache",
            f"paths.output_dir={tmp}/run",
            "logger=none",
            "trainer=cpu",
            "trainer.enable_progress_bar=false",
            "train_missing=true",
            f"limit_examples={n}",
        ]
        ckpt = REPO / "models" / task / "minilm"
        if (ckpt / "config.json").exists():
            overrides.append(f"reference.checkpoint={ckpt}")
            overrides.append(f"model.checkpoint={ckpt}")  # base of the quantized candidate
            Path(tmp, "models", task).mkdir(parents=True)
        else:
            print(
                f"    (no {ckpt}: reference/candidate checkpoints are fresh heads; train.py makes real ones)"
            )
            overrides += [
                "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1",
                "trainer.max_epochs=1",
            ]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides)
        if (ckpt / "config.json").exists():
            # The quantized candidate is built from the checkpoint once, outside the timing.
            from trustequiv.models.spec import ModelSpec
            from trustequiv.train.fine_tune import fine_tune

            spec = ModelSpec.from_config(cfg.model, cfg.compressor)
            fine_tune(
                spec,
                {"train": [], "validation": []},
                task_cfg=dict(cfg.task),
                trainer_cfg={},
                out_dir=spec.default_dir(f"{tmp}/models", task),
                base_checkpoint=str(ckpt),
            )
        else:
            evaluate(cfg)  # trains the throwaway checkpoints; then clear the cache so run 1 predicts
            import shutil

            shutil.rmtree(f"{tmp}/cache")
        t0 = time.perf_counter()
        first = evaluate(cfg)
        t1 = time.perf_counter()
        second = evaluate(cfg)
        t2 = time.perf_counter()
        assert all(second["cached"].values()) and not any(first["cached"].values())
        print(f"\n[2] evaluate {task}, {n} examples, reference + int8 candidate, calibration + errors")
        print(f"    first run (predicts both models): {t1 - t0:6.2f} s")
        print(
            f"    second run (cache hit, no forward pass): {t2 - t1:6.2f} s"
            f"  -> {(t1 - t0) / (t2 - t1):.1f}x faster"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mrpc")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bench_padding(args.task, args.n, args.batch_size, args.data_dir)
    bench_cache(args.task, min(args.n, 500), args.data_dir)


if __name__ == "__main__":
    main()
