"""Shared fixtures: a tiny BERT with a tokenizer written by code, a synthetic task in the local data layout,
and Hydra composition of the real config tree."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
DATA_DIR = Path(os.environ.get("TRUSTEQUIV_DATA_DIR", REPO.parent / "shared" / "data"))

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "terrible", "weak"]
FILLER = ["the", "movie", "was", "plot", "acting", "really", "quite", "a", "story", "and", "it", "is", "film"]


def synthetic_sentence(rng: random.Random, label: int) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 9))]
    words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
    return " ".join(words)


def write_synthetic_sst2(root: Path, n_train: int = 240, n_dev: int = 64, seed: int = 0) -> Path:
    """``<root>/sst2/{train,dev}.tsv`` in GLUE SST-2 layout; the label is set by one sentiment word."""
    rng = random.Random(seed)
    folder = root / "sst2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            y = rng.randint(0, 1)
            lines.append(f"{synthetic_sentence(rng, y)} \t{y}")
        (folder / name).write_text("\n".join(lines) + "\n")
    return root


def write_tiny_bert(directory: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A randomly initialised tiny BERT encoder plus a WordPiece tokenizer over the synthetic vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *sorted(set(POSITIVE + NEGATIVE + FILLER)),
        ".",
        ",",
    ]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # from_pretrained(dir), not BertTokenizerFast(vocab_file=...): REFERENCES.md pitfall under transformers 5.
    tokenizer = BertTokenizerFast.from_pretrained(directory, do_lower_case=True)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


def write_classifier(tiny: Path, out_dir: Path, label_names=("negative", "positive")) -> Path:
    """The tiny BERT with a seeded random classification head, saved as a fine-tuned checkpoint."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    id2label = dict(enumerate(label_names))
    model = BertForSequenceClassification.from_pretrained(
        tiny, num_labels=len(label_names), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    with torch.no_grad():  # logits of order 1, so the tolerances below are not trivially met
        model.classifier.weight.mul_(30.0)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    return write_synthetic_sst2(tmp_path_factory.mktemp("data"))


def compose(config_name: str, overrides: list[str]):
    """Compose the real config tree as the entry points would (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from trustequiv.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def tiny_overrides(
    tmp: Path, tiny: Path, data_dir: Path, *extra: str, task: str = "sst2", candidate: str = "tiny_cand"
) -> list[str]:
    """Overrides that run the whole pipeline on the tiny model and synthetic task in a few seconds.

    ``candidate``: the candidate's base name (``tiny_ref`` makes it ``tiny_ref+<compressor>``)."""
    return [
        f"task={task}",
        "model=minilm",
        "model@reference=minilm",
        f"model.pretrained={tiny}",
        f"reference.pretrained={tiny}",
        "reference.name=tiny_ref",
        f"model.name={candidate}",
        f"paths.data_dir={data_dir}",
        f"paths.models_dir={tmp / 'models'}",
        f"paths.cache_dir={tmp / 'cache'}",
        f"paths.output_dir={tmp / 'run'}",
        "logger=none",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "task.training.batch_size=16",
        "task.training.learning_rate=1e-3",
        "task.max_length=32",
        # no noise-floor replica and no trust callback unless a test asks for them
        # (tests/core/test_noise_floor.py, tests/core/test_trust_callback.py): the others stay as fast
        "++noise_floor.seeds=[]",
        "++callbacks.trust.enabled=false",
        *extra,
    ]


CACHED = "the model was loaded although its outputs are cached"


def forbid(monkeypatch, module, *names: str, why: str = CACHED):
    """Make ``module.<name>`` raise for each name: a rerun the cache should serve must not call it."""

    def boom(*args, **kwargs):
        raise AssertionError(why)

    for name in names:
        monkeypatch.setattr(module, name, boom)
