"""Candidate runtimes on the CPU (measured, not asserted), same texts, same run, same batching:
torch fp32, ONNX Runtime fp32, ONNX Runtime int8 (``quantize_dynamic``, QInt8 MatMul weights) and torch.ao
int8 (``plugins.compressors.quantize.QuantizeDynamic``). Each is a text scorer
(:class:`trustequiv.models.scorer.TorchTextScorer` / :class:`plugins.sources.onnx.runtime.OnnxTextScorer`):
length-sorted
dynamically padded batches of ``--batch-tokens`` padded tokens. Prints examples/s (best of ``--repeats``
after a warm-up), the largest probability difference from torch fp32 and the share of equal predictions.

    python benchmarks/onnx_runtimes.py [--task mrpc] [--n 512] [--threads 2] [--data-dir ../shared/data]

Uses the fine-tuned ``models/<task>/minilm`` (or ``--checkpoint``) if present, else all-MiniLM-L6-v2 with a
fresh head (throughput does not depend on the head's weights). Not named onnx.py: run as a script, its folder
comes first on sys.path and the file would shadow the ``onnx`` package.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def checkpoint_dir(arg: str | None, task: str, label_names: list[str], tmp: Path) -> Path:
    """The fine-tuned checkpoint to load, else all-MiniLM-L6-v2 with a fresh head saved under ``tmp``."""
    ckpt = Path(arg) if arg else REPO / "models" / task / "minilm"
    if (ckpt / "config.json").exists():
        return ckpt
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trustequiv.config import minilm_path

    print(f"(no {ckpt}: all-MiniLM-L6-v2 with a fresh head; train.py makes the real one)")
    id2label = dict(enumerate(label_names))
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(),
        num_labels=len(label_names),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model.save_pretrained(tmp / "fresh")
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(tmp / "fresh")
    return tmp / "fresh"


def timed(scorer, texts, repeats: int) -> tuple[float, np.ndarray]:
    """Best seconds of ``repeats`` passes over ``texts`` (after a warm-up on a few), and the probabilities."""
    scorer(texts[:8])
    best, probs = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        probs = scorer(texts)
        best = min(best, time.perf_counter() - start)
    return best, probs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mrpc")
    p.add_argument("--n", type=int, default=512)
    p.add_argument(
        "--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)"
    )
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from hydra import compose, initialize_config_dir

    from plugins.compressors.quantize import QuantizeDynamic
    from plugins.sources.onnx.export import export_classifier
    from plugins.sources.onnx.runtime import OnnxModel, OnnxTextScorer
    from trustequiv.config import register_resolvers
    from trustequiv.models.loading import load_classifier
    from trustequiv.models.scorer import TorchTextScorer
    from trustequiv.run.pipeline import load_task_data

    if args.threads:
        torch.set_num_threads(args.threads)
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "evaluate",
            [f"task={args.task}", f"paths.data_dir={args.data_dir}", "paths.output_dir=/tmp/bench"],
        )
    task = dict(cfg.task)
    labels = list(task["label_names"])
    split = load_task_data(cfg)[task["eval_split"]]
    split = split.select(range(min(args.n, len(split))))
    pair = bool(task["pair"])
    text_a = list(split["text_a"])
    texts = [(a, b) for a, b in zip(text_a, split["text_b"], strict=True)] if pair else [(a,) for a in text_a]
    max_length = int(task["max_length"])

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt = checkpoint_dir(args.checkpoint, args.task, labels, tmp)
        loaded = load_classifier(str(ckpt), labels)
        names = [""] * len(labels)
        for canonical, column in enumerate(loaded.label_permutation):
            names[column] = labels[canonical]
        scorers = {
            "torch fp32": TorchTextScorer.from_loaded(loaded, max_length=max_length, devices=["cpu"]),
        }
        for label, quant in (("onnxruntime fp32", None), ("onnxruntime int8", "int8")):
            settings = None
            if quant:
                settings = {
                    "method": "onnxruntime.quantization.quantize_dynamic",
                    "weight_type": "QInt8",
                    "op_types": ["MatMul"],
                    "per_channel": False,
                    "reduce_range": False,
                }
            out = tmp / label.replace(" ", "_")
            started = time.perf_counter()
            export_classifier(
                copy.deepcopy(loaded),
                out,
                pair=pair,
                label_names=names,
                export={"opset": 17, "quantize": settings},
            )
            mib = (out / "model.onnx").stat().st_size / 2**20
            print(f"exported {label} in {time.perf_counter() - started:.1f} s ({mib:.1f} MiB)")
            model = OnnxModel.load(out / "model.onnx", names, args.threads)
            scorers[label] = OnnxTextScorer(model, loaded.label_permutation, max_length=max_length)
        ao = copy.deepcopy(loaded)
        ao.model = QuantizeDynamic().on_load(ao.model).eval()
        ao.cpu_only = True
        scorers["torch.ao int8"] = TorchTextScorer.from_loaded(ao, max_length=max_length)

        print(
            f"\n{len(texts)} {args.task} {task['eval_split']} texts, batch_tokens {args.batch_tokens}, "
            f"{torch.get_num_threads()} torch threads, onnxruntime threads {args.threads or 'default'}, "
            f"checkpoint {ckpt}"
        )
        base = None
        for label, scorer in scorers.items():
            scorer.configure(batch_tokens=args.batch_tokens)
            scorer.dedup = False  # every text runs: a throughput measure, not a cache test
            seconds, probs = timed(scorer, texts, args.repeats)
            if base is None:
                base = probs
            diff = float(np.abs(probs - base).max())
            agree = float((probs.argmax(1) == base.argmax(1)).mean())
            print(
                f"    {label:18s} {len(texts) / seconds:8.1f} ex/s  {seconds:6.2f} s  "
                f"max |p - p_torch| {diff:.2e}  same prediction {agree:.1%}"
            )


if __name__ == "__main__":
    main()
