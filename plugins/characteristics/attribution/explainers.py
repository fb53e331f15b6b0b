"""LIME, SHAP (permutation) and Integrated Gradients over word features, many examples at once.

The attribution algorithms are the libraries' own (``lime.lime_text.LimeTextExplainer``,
``shap.PermutationExplainer``, ``captum.attr.LayerIntegratedGradients``). What is ours:

- word features with pair structure (:class:`WordFeatures`): LIME sees the example as the feature tokens
  ``"0 1 2 ~ 3 4"`` (``~`` = the separator, a non-word for LIME's ``\\W+`` split, so it is never a feature and
  never masked); the perturbed token strings are turned back into (text_a, text_b) pairs;
- a per-example sampler seed (:func:`example_seed`), so every model gets the same perturbations;
- two passes for large batches: the samplers' draws do not depend on the model's answers, so a first pass
  records every perturbed text of every example (LIME's explainer is stopped right after sampling; SHAP's is
  fed zeros), the model's text scorer (:class:`trustequiv.models.scorer.TextScorer`) evaluates all unique
  texts at
  once, and a second pass with the same seeds replays each explainer on the stored probabilities.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

from plugins.characteristics.attribution.perturb import WordFeatures, example_seed
from trustequiv.data.batches import TOKEN_KEYS, pad_features, pad_id_of
from trustequiv.functional.attribution import aggregate_to_words

Texts = tuple[str, ...]
Predict = Callable[[Sequence[Texts]], np.ndarray]


class _Recorded(Exception):
    """Stops LIME after its sampling step in the recording pass."""


def lime_text(feat: WordFeatures) -> str:
    """The string LIME explains: one token per word feature, ``~`` between the two texts."""
    idx = [str(i) for i in range(feat.n_features)]
    n_a = len(feat.spans[0])
    return " ".join(idx[:n_a]) + (" ~ " + " ".join(idx[n_a:]) if len(feat.spans) > 1 else "")


def _lime_keep(s: str, n: int) -> np.ndarray:
    keep = np.zeros(n, dtype=bool)
    for tok in s.replace("~", " ").split():
        if tok.isdigit():
            keep[int(tok)] = True
    return keep


def _run_two_pass(
    feats: Sequence[WordFeatures],
    predict: Predict,
    explain_one: Callable[[int, WordFeatures, Callable[[list[str]], np.ndarray]], np.ndarray],
    mask_token: str | None,
    n_classes: int,
    stop_early: bool,
) -> list[np.ndarray]:
    """Record each explainer's perturbations, evaluate them all at once, replay. ``explain_one(i, feat, fn)``
    runs the explainer of example i with classifier ``fn`` (list of mask keys -> probs)."""
    requests: list[list[bytes]] = []
    for i, feat in enumerate(feats):
        seen: list[bytes] = []

        def record(keys: list[bytes], seen=seen) -> np.ndarray:
            seen.extend(keys)
            if stop_early:
                raise _Recorded
            return np.zeros((len(keys), n_classes))

        with contextlib.suppress(_Recorded):
            explain_one(i, feat, record)
        requests.append(list(dict.fromkeys(seen)))
    texts: list[Texts] = []
    for feat, keys in zip(feats, requests, strict=True):
        for key in keys:
            keep = np.frombuffer(key, dtype=bool)
            texts.append(feat.masked(keep, mask_token))
    probs = predict(texts) if texts else np.zeros((0, n_classes))
    out, row = [], 0
    for i, (feat, keys) in enumerate(zip(feats, requests, strict=True)):
        table = {k: probs[row + j] for j, k in enumerate(keys)}
        row += len(keys)

        def lookup(keys: list[bytes], table=table) -> np.ndarray:
            try:
                return np.stack([table[k] for k in keys])
            except KeyError:
                raise RuntimeError(
                    "the explainer asked for a perturbation it did not draw when recorded"
                ) from None

        out.append(explain_one(i, feat, lookup))
    return out


def lime_attributions(
    feats: Sequence[WordFeatures],
    predict: Predict,
    *,
    seed: int,
    n_classes: int,
    num_samples: int = 1000,
    num_features: int = 20,
    mask_token: str | None = None,
    kernel_width: float = 25.0,
) -> list[np.ndarray]:
    """LIME (``LimeTextExplainer``, one explainer per example seeded by :func:`example_seed`) for every class.

    Returns:
        per example ``(C, F)`` float64: LIME's weights of the ``num_features`` features it selects for each
        class (paper A: 20), 0 for the others.
    """
    # optional dependency (the [explain] extra): imported when used
    from lime.lime_text import LimeTextExplainer

    def explain_one(i: int, feat: WordFeatures, fn: Callable) -> np.ndarray:
        n = feat.n_features
        attr = np.zeros((n_classes, n))
        if n == 0:
            return attr
        explainer = LimeTextExplainer(
            kernel_width=kernel_width,
            split_expression=r"\W+",
            bow=False,
            mask_string="x",
            random_state=example_seed(seed, feat.example_id),
        )

        def classifier(strings: list[str]) -> np.ndarray:
            return fn([_lime_keep(s, n).tobytes() for s in strings])

        exp = explainer.explain_instance(
            lime_text(feat),
            classifier,
            labels=tuple(range(n_classes)),
            num_features=num_features,
            num_samples=num_samples,
        )
        for c in range(n_classes):
            for j, w in exp.as_map()[c]:
                attr[c, int(j)] = w
        return attr

    return _run_two_pass(feats, predict, explain_one, mask_token, n_classes, stop_early=True)


def shap_max_evals(n_features: int) -> int:
    """Paper A's budget: ``max(100, 2 n + 1)`` (at least one forward-and-back permutation)."""
    return max(100, 2 * n_features + 1)


def shap_attributions(
    feats: Sequence[WordFeatures],
    predict: Predict,
    *,
    seed: int,
    n_classes: int,
    max_evals: int | None = None,
    mask_token: str | None = None,
) -> list[np.ndarray]:
    """SHAP permutation values (``shap.PermutationExplainer``, seeded per example) for every class.

    The masker hides word features (deleted, or replaced by ``mask_token``); the separator is not a feature.

    Returns:
        per example ``(C, F)`` float64.
    """
    # optional dependency (the [explain] extra): imported when used
    import shap

    def masker(mask: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (x * mask).reshape(1, -1)

    def explain_one(i: int, feat: WordFeatures, fn: Callable) -> np.ndarray:
        n = feat.n_features
        if n == 0:
            return np.zeros((n_classes, 0))

        def model(rows: np.ndarray) -> np.ndarray:
            return fn([np.asarray(r, dtype=bool).tobytes() for r in np.atleast_2d(rows)])

        explainer = shap.PermutationExplainer(model, masker, seed=example_seed(seed, feat.example_id))
        evals = max(max_evals if max_evals is not None else shap_max_evals(n), 2 * n + 1)
        res = explainer(np.ones((1, n)), max_evals=evals, batch_size=evals, silent=True)
        return np.asarray(res.values[0], dtype=np.float64).reshape(n, n_classes).T.copy()

    # The permutations do not depend on the model's answers, so SHAP runs twice (recording on zeros, then
    # replaying): its own work is ~0.07 s per 46-word example, while one example's 93 masks, deleting 0..46
    # words, padded together waste much of a batch (py-spy: 99.8% of the direct way's time in the model).
    return _run_two_pass(feats, predict, explain_one, mask_token, n_classes, stop_early=False)


def differentiable_twin(model: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
    """``(model, False)`` when it can be differentiated, else ``(copy, True)``: a copy whose dynamically
    quantized int8 Linear layers (``torch.ao.nn.quantized.dynamic.Linear``, no autograd) are fp32 Linear
    layers holding the SAME int8 weights, dequantized. The activations' dynamic quantization, which has no
    gradient, is left out: integrated gradients then follow the int8 weights, not activation rounding."""

    if not any(isinstance(m, DynamicQuantLinear) for m in model.modules()):
        return model, False
    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DynamicQuantLinear):
                weight, bias = child.weight().dequantize(), child.bias()
                linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
                with torch.no_grad():
                    linear.weight.copy_(weight)
                    if bias is not None:
                        linear.bias.copy_(bias)
                setattr(parent, name, linear)
    return twin.eval(), True


def ig_attributions(
    feats: Sequence[WordFeatures],
    model: torch.nn.Module,
    tokenizer: Any,
    label_permutation: Sequence[int] | None,
    *,
    n_classes: int,
    max_length: int = 128,
    n_steps: int = 50,
    batch_size: int = 8,
    internal_batch_size: int = 256,
) -> list[np.ndarray]:
    """Integrated gradients (``captum.attr.LayerIntegratedGradients``) on the input word embeddings, for the
    softmax probability of each class, baseline = the pad token at every non-special position; token
    attributions are summed over the embedding dimension, then over the tokens of each word.

    Returns:
        per example ``(C, F)`` float64.

    Raises:
        RuntimeError: the model cannot be differentiated (e.g. int8 dynamic quantization).
    """
    # optional dependency (the [explain] extra): imported when used
    from captum.attr import LayerIntegratedGradients

    perm = list(label_permutation) if label_permutation is not None else list(range(n_classes))
    device = next(model.parameters()).device

    def forward(input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return torch.softmax(model(**kwargs).logits.float()[:, perm], dim=-1)

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    pair = len(feats[0].texts) > 1 if feats else False
    enc = tokenizer(
        [f.texts[0] for f in feats],
        [f.texts[1] for f in feats] if pair else None,
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
    )
    special = set(tokenizer.all_special_ids)
    pad = pad_id_of(tokenizer)
    keys = [k for k in TOKEN_KEYS if k in enc]
    order = np.argsort([-len(x) for x in enc["input_ids"]], kind="stable")
    out: list[np.ndarray | None] = [None] * len(feats)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        tensors = pad_features([{k: enc[k][i] for k in keys} for i in idx], pad, device)
        ids = tensors["input_ids"]
        is_special = torch.zeros_like(ids, dtype=torch.bool)
        for s in special:
            is_special |= ids == s
        baseline = torch.where(is_special, ids, torch.full_like(ids, pad))
        extra = (tensors["attention_mask"],) + (
            (tensors["token_type_ids"],) if "token_type_ids" in tensors else ()
        )
        per_class = []
        for c in range(n_classes):
            attr = lig.attribute(
                ids,
                baselines=baseline,
                additional_forward_args=extra,
                target=c,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
            )
            per_class.append(attr.sum(dim=-1).detach().double().cpu().numpy())
        for row, i in enumerate(idx):
            feat = feats[i]
            n_tok = len(enc["input_ids"][i])
            tw = feat.token_words(enc["offset_mapping"][i], enc.sequence_ids(int(i)))
            out[i] = np.stack(
                [aggregate_to_words(per_class[c][row, :n_tok], tw, feat.n_features) for c in range(n_classes)]
            )
    return out  # type: ignore[return-value]
