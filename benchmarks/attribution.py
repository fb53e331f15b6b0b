"""LIME and SHAP attributions: our batched way vs the paper's way, and vs the throughput bound.

Measured, not asserted. On ``n`` MRPC test examples (default 50) with the fine-tuned minilm classifier:

- paper's way: the stock explainer called per example, its predict function tokenizing 256 texts at a time
  (paper A's code default), padded to the batch maximum, in the explainer's (unsorted) order, under no_grad;
- our way: ``plugins.characteristics.attribution.explainers`` (record all perturbations, evaluate the
  unique texts in large length-sorted batches under inference_mode, replay);
- both with the same per-example seeds and word features, so the attributions must agree (max |diff| printed,
  checked against ``--tolerance``);
- bound: total perturbed tokens (every text the explainer asks for, duplicates included) divided by the
  model's best measured tokens per second on this machine (length-sorted batches, best of several
  batch sizes).

    flock /work/heavy.lock python benchmarks/attribution.py [--n 50] [--num-samples 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugins.characteristics.attribution import explainers
from plugins.characteristics.attribution.perturb import WordFeatures
from trustequiv.data.sampling import sample_positions as select_examples
from trustequiv.models.scorer import (
    TorchTextScorer as BatchedPredictor,  # the attribution predictor, now the scorer
)


def naive_predict(model, tokenizer, perm, batch_size=256, max_length=128):
    """Paper A's predict function: 256 texts per tokenizer call, padded to the batch maximum, unsorted."""
    stats = {"texts": 0, "tokens": 0}

    def predict(texts):
        out = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            enc = tokenizer(
                [t[0] for t in chunk],
                [t[1] for t in chunk],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            stats["texts"] += len(chunk)
            stats["tokens"] += int(enc["attention_mask"].sum())
            with torch.no_grad():
                logits = model(**enc).logits[:, perm]
            out.append(torch.softmax(logits, -1).double().numpy())
        return np.concatenate(out)

    return predict, stats


def paper_lime(feats, predict, seed, n_classes, num_samples):
    from lime.lime_text import LimeTextExplainer

    from plugins.characteristics.attribution.perturb import example_seed

    out = []
    for f in feats:
        exp = LimeTextExplainer(
            split_expression=r"\W+", bow=False, mask_string="x", random_state=example_seed(seed, f.example_id)
        )

        def classifier(strings, f=f):
            return predict([f.masked(explainers._lime_keep(s, f.n_features)) for s in strings])

        e = exp.explain_instance(
            explainers.lime_text(f),
            classifier,
            labels=tuple(range(n_classes)),
            num_features=20,
            num_samples=num_samples,
        )
        a = np.zeros((n_classes, f.n_features))
        for c in range(n_classes):
            for j, w in e.as_map()[c]:
                a[c, j] = w
        out.append(a)
    return out


def paper_shap(feats, predict, seed, n_classes):
    import shap

    from plugins.characteristics.attribution.perturb import example_seed

    out = []
    for f in feats:
        n = f.n_features

        def model(rows, f=f):
            return predict([f.masked(np.asarray(r, dtype=bool)) for r in np.atleast_2d(rows)])

        ex = shap.PermutationExplainer(
            model, lambda m, x: (x * m).reshape(1, -1), seed=example_seed(seed, f.example_id)
        )
        res = ex(np.ones((1, n)), max_evals=explainers.shap_max_evals(n), silent=True)
        out.append(np.asarray(res.values[0]).reshape(n, n_classes).T)
    return out


def best_throughput(model, tokenizer, perm, texts, budgets=(4096, 8192, 16384, 32768, 65536)):
    """Best tokens/s of a plain forward over ``texts`` in length-sorted batches (no dedup), and its budget."""
    best = (0.0, None)
    for b in budgets:
        p = BatchedPredictor(model, tokenizer, perm, batch_tokens=b, dedup=False)
        p(texts[: len(texts) // 4])  # warm-up at this shape
        p = BatchedPredictor(model, tokenizer, perm, batch_tokens=b, dedup=False)
        t = time.perf_counter()
        p(texts)
        rate = p.n_tokens / (time.perf_counter() - t)
        print(f"  throughput batch_tokens={b:6d}: {rate:9.0f} tokens/s")
        best = max(best, (rate, b), key=lambda x: x[0])
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--num-samples", type=int, default=100, help="LIME samples (paper A, PI: 100)")
    ap.add_argument("--checkpoint", default="models/mrpc/minilm")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()

    import hydra
    from omegaconf import OmegaConf

    from trustequiv.models.loading import load_classifier

    torch.manual_seed(0)
    cfg = OmegaConf.load("conf/task/mrpc.yaml")
    split = hydra.utils.instantiate(cfg.loader).load(args.data_dir, label_names=list(cfg.label_names))["test"]
    pos = select_examples(split["id"], args.n)
    feats = [WordFeatures.from_texts(split["id"][i], split["text_a"][i], split["text_b"][i]) for i in pos]
    m = load_classifier(args.checkpoint, list(cfg.label_names))
    model, tok, perm, C = m.model.eval(), m.tokenizer, m.label_permutation, len(cfg.label_names)
    print(
        f"{len(feats)} MRPC test examples, {np.mean([f.n_features for f in feats]):.1f} words each, "
        f"torch threads {torch.get_num_threads()}"
    )

    # warm-up: torch kernels, shap's numba compilation
    warm = BatchedPredictor(model, tok, perm)
    explainers.shap_attributions(feats[:2], warm, seed=0, n_classes=C)
    explainers.lime_attributions(feats[:2], warm, seed=0, n_classes=C, num_samples=20)

    rows = []
    for method in ("lime", "shap"):
        naive, stats = naive_predict(model, tok, perm)
        t = time.perf_counter()
        if method == "lime":
            paper = paper_lime(feats, naive, args.seed, C, args.num_samples)
        else:
            paper = paper_shap(feats, naive, args.seed, C)
        t_paper = time.perf_counter() - t

        ours_pred = BatchedPredictor(model, tok, perm)
        t = time.perf_counter()
        if method == "lime":
            ours = explainers.lime_attributions(
                feats, ours_pred, seed=args.seed, n_classes=C, num_samples=args.num_samples
            )
        else:
            ours = explainers.shap_attributions(feats, ours_pred, seed=args.seed, n_classes=C)
        t_ours = time.perf_counter() - t
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, paper, strict=True))
        scale = max(float(np.max(np.abs(b))) for b in paper)

        # every perturbed text the explainer asks for (duplicates included) -> the throughput bound
        rec: list = []

        def record(texts, rec=rec):
            rec.extend(texts)
            return np.zeros((len(texts), C))

        if method == "lime":
            explainers.lime_attributions(
                feats, record, seed=args.seed, n_classes=C, num_samples=args.num_samples
            )
        else:
            explainers.shap_attributions(feats, record, seed=args.seed, n_classes=C)
        print(
            f"\n{method.upper()}: {stats['texts']} perturbed texts asked by the explainer "
            f"({ours_pred.n_unique} unique), best throughput:"
        )
        rate, budget = best_throughput(model, tok, perm, rec)
        total_tokens = stats["tokens"]  # real tokens of every text the explainers asked for
        bound = total_tokens / rate
        rows.append((method, t_paper, t_ours, bound, diff, scale, budget))
        print(
            f"  paper's way {t_paper:7.2f} s | ours {t_ours:7.2f} s | speed-up {t_paper / t_ours:5.2f}x | "
            f"bound {bound:6.2f} s ({total_tokens} tokens at {rate:.0f} tok/s) | ours / bound "
            f"{t_ours / bound:4.2f} | max |attr diff| {diff:.2e} (max |attr| {scale:.3f}) "
            f"{'OK' if diff <= args.tolerance else 'ABOVE TOLERANCE'} (tol {args.tolerance:g})"
        )
    print("\nmethod  paper_s  ours_s  speedup  bound_s  ours/bound  max_attr_diff")
    for method, tp, to, b, d, _, _ in rows:
        print(f"{method:6s} {tp:8.2f} {to:7.2f} {tp / to:8.2f} {b:8.2f} {to / b:11.2f} {d:14.2e}")


if __name__ == "__main__":
    main()
