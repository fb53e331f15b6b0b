"""Knowledge distillation (issue 12): the losses against outside formulas, the training module, and the
``distill`` compressor end to end (teacher outputs from the cache, resume, evaluation)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose, tiny_overrides, write_classifier, write_tiny_bert
from torch import nn

from trustequiv.functional import distillation as D
from trustequiv.functional.cka import linear_cka
from trustequiv.run import pipeline
from trustequiv.train import fine_tune as training
from trustequiv.train.distillation import DistillationModule, DistillTerms, LiveTeacher, TeacherTargets
from trustequiv.train.lightning_module import SequenceClassifier


def _logits(seed: int, b: int = 8, c: int = 3) -> torch.Tensor:
    return torch.randn(b, c, generator=torch.Generator().manual_seed(seed)) * 2.0


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_matches_kl_div_and_the_formula(temperature):
    s, t = _logits(0).requires_grad_(), _logits(1)
    got = D.kd_loss(s, t, temperature)
    reference = (
        F.kl_div(
            F.log_softmax(s / temperature, -1),
            F.log_softmax(t / temperature, -1),
            log_target=True,
            reduction="batchmean",
        )
        * temperature**2
    )
    p_t, p_s = _softmax(t.numpy() / temperature), _softmax(s.detach().numpy() / temperature)
    formula = (p_t * (np.log(p_t) - np.log(p_s))).sum(-1).mean() * temperature**2
    torch.testing.assert_close(got, reference)
    assert got.item() == pytest.approx(formula, rel=1e-5)
    got.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert D.kd_loss(t, t, temperature).item() == pytest.approx(0.0, abs=1e-6)
    assert D.kd_loss(s, t, temperature, reduction="none").shape == (8,)


def test_distillation_loss_mixes_kd_and_cross_entropy():
    s, t, y = _logits(0), _logits(1), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ce = F.cross_entropy(s, y)
    kd = D.kd_loss(s, t, 3.0)
    torch.testing.assert_close(D.distillation_loss(s, t, y, temperature=3.0, alpha=0.0), ce)
    torch.testing.assert_close(D.distillation_loss(s, t, y, temperature=3.0, alpha=1.0), kd)
    torch.testing.assert_close(D.distillation_loss(s, t, y, temperature=3.0, alpha=0.3), 0.3 * kd + 0.7 * ce)
    with pytest.raises(ValueError, match="alpha"):
        D.distillation_loss(s, t, y, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        D.kd_loss(s, t, 0.0)
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        D.kd_loss(s, t[:, :2])


def test_hidden_cosine_loss_is_distilberts_cosine_embedding_loss():
    g = torch.Generator().manual_seed(0)
    hs, ht = torch.randn(4, 5, 6, generator=g), torch.randn(4, 5, 6, generator=g)
    mask = torch.ones(4, 5)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    keep = mask.bool()
    # DistilBERT: nn.CosineEmbeddingLoss(reduction="mean") with target 1 on the unmasked states
    reference = nn.CosineEmbeddingLoss()(hs[keep], ht[keep], torch.ones(int(keep.sum())))
    torch.testing.assert_close(D.hidden_cosine_loss(hs, ht, mask), reference)
    assert D.hidden_cosine_loss(ht, ht).item() == pytest.approx(0.0, abs=1e-6)
    # other widths: a learned projection, which gets gradients
    proj = nn.Linear(4, 6)
    loss = D.hidden_cosine_loss(torch.randn(4, 5, 4, generator=g), ht, mask, projection=proj)
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="projection"):
        D.hidden_cosine_loss(torch.randn(4, 5, 4), ht)


def test_focal_distillation_weights_up_weight_what_the_teacher_gets_right():
    t = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    y = torch.tensor([0, 0, 0])  # teacher right, wrong, right
    torch.testing.assert_close(D.focal_distillation_weights(t, y, 1.0, 5.0), torch.tensor([6.0, 1.0, 6.0]))
    s = _logits(2, 3, 2).requires_grad_()
    per_example = D.kd_loss(s, t, 2.0, reduction="none")
    got = D.focal_distillation_loss(s, t, y, temperature=2.0, alpha=1.0, beta=5.0)
    torch.testing.assert_close(got, (torch.tensor([6.0, 1.0, 6.0]) * per_example).mean())
    got.backward()
    assert s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=">= 0"):
        D.focal_distillation_weights(t, y, -1.0, 1.0)


def test_confidence_gap():
    s, t = _logits(3), _logits(4)
    want = np.abs(_softmax(s.numpy()).max(-1) - _softmax(t.numpy()).max(-1)).mean()
    assert D.confidence_gap(s, t).item() == pytest.approx(want, rel=1e-5)
    assert D.confidence_gap(t, t).item() == 0.0


def _mmce_numpy(logits: np.ndarray, labels: np.ndarray, width: float = 0.4) -> float:
    """Kumar et al. (2018), eq. (1) on a sample, as a double loop."""
    p = _softmax(logits)
    r, c = p.max(-1), (p.argmax(-1) == labels).astype(float)
    m = len(r)
    total = sum(
        (c[i] - r[i]) * (c[j] - r[j]) * np.exp(-abs(r[i] - r[j]) / width) for i in range(m) for j in range(m)
    )
    return float(np.sqrt(total / m**2))


def test_mmce_matches_a_numpy_double_loop_and_has_gradients():
    logits = _logits(5, 16, 3).requires_grad_()
    labels = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(6))
    got = D.mmce(logits, labels)
    assert got.item() == pytest.approx(_mmce_numpy(logits.detach().numpy(), labels.numpy()), rel=1e-5)
    got.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # over-confident and wrong costs more than confident and right
    confident = torch.tensor([[6.0, 0.0]] * 4)
    assert D.mmce(confident, torch.zeros(4, dtype=torch.long)) < D.mmce(
        confident, torch.ones(4, dtype=torch.long)
    )


def test_explanation_alignment_loss():
    g = torch.Generator().manual_seed(7)
    a_s, a_t = torch.randn(3, 6, generator=g, requires_grad=True), torch.randn(3, 6, generator=g)
    mask = torch.ones(3, 6)
    mask[1, 4:] = 0
    cos = [
        float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))
        for x, y in zip((a_s.detach() * mask).numpy(), (a_t * mask).numpy(), strict=True)
    ]
    got = D.explanation_alignment_loss(a_s, a_t, mask)
    assert got.item() == pytest.approx(1 - np.mean(cos), rel=1e-5)
    got.backward()
    assert a_s.grad.abs().sum() > 0
    assert D.explanation_alignment_loss(a_t, 3.0 * a_t).item() == pytest.approx(0.0, abs=1e-6)


def test_linear_cka_torch_matches_the_repository_cka():
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(20, 5, generator=g), torch.randn(20, 7, generator=g)
    y[:, :5] += 2 * x
    assert D.linear_cka_torch(x, y).item() == pytest.approx(linear_cka(x, y), rel=1e-5)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    assert D.cka_loss(x, 3.0 * x @ q).item() == pytest.approx(0.0, abs=1e-5)  # rotation, scale
    x.requires_grad_()
    D.cka_loss(x, y).backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 rows"):
        D.linear_cka_torch(x[:1], y[:1])


# ------------------------------------------------------------------------------------------------ module


@pytest.fixture(scope="module")
def classifier(tiny_bert, tmp_path_factory) -> Path:
    return write_classifier(tiny_bert, tmp_path_factory.mktemp("clf") / "clf")


def _batch(tokenizer, n: int = 6) -> dict[str, torch.Tensor]:
    texts = ["the movie was good", "awful plot", "a fine story and it is nice", "dull", "great film", "weak"]
    enc = tokenizer(texts[:n], padding=True, return_tensors="pt")
    return {
        **dict(enc),
        "labels": torch.tensor([1, 0, 1, 0, 1, 0][:n]),
        "example_id": torch.tensor([10, 11, 12, 13, 14, 15][:n]),
    }


def _targets(model, batch) -> TeacherTargets:
    """The model's own outputs on ``batch``, as the cache would hold them."""
    module = SequenceClassifier(model.eval(), 2)
    with torch.no_grad():
        out = module.predict_step(batch, 0)
    return TeacherTargets(out["example_id"], out["logits"], out["embeddings"])


def _student(classifier: Path, **settings):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(classifier)
    return AutoModelForSequenceClassification.from_pretrained(classifier).eval(), tokenizer


def test_student_equal_to_teacher_has_no_distillation_loss(classifier):
    """KD, confidence, representation and explanation terms are 0 when the student is the teacher."""
    model, tokenizer = _student(classifier)
    teacher, _ = _student(classifier)
    batch = _batch(tokenizer)
    terms = DistillTerms(alpha=1.0, calibration_weight=1.0, representation_weight=1.0, explanation=1.0)
    module = DistillationModule(
        model, 2, teacher=_targets(teacher, batch), terms=terms, live_teacher=LiveTeacher(teacher, [0, 1])
    )
    parts = module.loss_terms(batch)
    assert set(parts) == {"distillation", "calibration", "representation", "explanation", "loss"}
    for name, value in parts.items():
        assert value.item() == pytest.approx(0.0, abs=1e-5), name
    assert "teacher" not in module.hparams and module.hparams["terms"]["explanation"] == 1.0


def test_trust_terms_change_the_loss_and_reach_the_student(classifier, tiny_bert):
    from plugins.compressors.layer_drop import LayerDrop

    teacher, tokenizer = _student(classifier)
    batch = _batch(tokenizer)
    targets = _targets(teacher, batch)
    losses = {}
    for label, terms in {
        "plain": DistillTerms(),
        "trust": DistillTerms(
            negative_flip=1.0,
            calibration="mmce",
            calibration_weight=1.0,
            representation="cka",
            representation_weight=1.0,
            explanation=1.0,
        ),
    }.items():
        student = LayerDrop().compress(_student(classifier)[0]).train()
        torch.manual_seed(0)
        module = DistillationModule(
            student, 2, teacher=targets, terms=terms, live_teacher=LiveTeacher(teacher, [0, 1])
        )
        parts = module.loss_terms(batch)
        parts["loss"].backward()
        grads = [p.grad for p in student.parameters() if p.requires_grad]
        assert (
            all(g is not None for g in grads[:3])
            and sum(float(g.abs().sum()) for g in grads if g is not None) > 0
        )
        losses[label] = parts
    assert set(losses["trust"]) - set(losses["plain"]) == {
        "negative_flip",
        "calibration",
        "representation",
        "explanation",
    }
    assert losses["trust"]["loss"].item() > losses["plain"]["loss"].item()
    torch.testing.assert_close(losses["trust"]["distillation"], losses["plain"]["distillation"])


def test_teacher_outputs_are_looked_up_by_example_id(classifier):
    model, tokenizer = _student(classifier)
    batch = _batch(tokenizer)
    targets = _targets(model, batch)
    shuffled = TeacherTargets(targets.example_ids.flip(0), targets.logits.flip(0), targets.embeddings.flip(0))
    module = DistillationModule(model, 2, teacher=shuffled, terms=DistillTerms(representation_weight=1.0))
    logits, emb = module.teacher_targets(batch)
    torch.testing.assert_close(logits, targets.logits)
    torch.testing.assert_close(emb, targets.embeddings)
    with pytest.raises(KeyError, match="99"):
        module.teacher_targets({**batch, "example_id": torch.tensor([10, 99, 11, 12, 13, 14])})
    with pytest.raises(ValueError, match="live teacher"):
        DistillationModule(model, 2, teacher=targets, terms=DistillTerms(explanation=1.0))
    with pytest.raises(ValueError, match="calibration"):
        DistillTerms(calibration="ece")


# ------------------------------------------------------------------------------------------------ compressor


TEACHER_TRAINING = ("trainer.max_epochs=4", "task.training.learning_rate=5e-3")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_bert, synthetic_data_dir) -> Path:
    """The tiny reference fine-tuned on the synthetic SST-2 until it has learnt the task: the teacher."""
    tmp = tmp_path_factory.mktemp("teacher")
    overrides = tiny_overrides(
        tmp,
        tiny_bert,
        synthetic_data_dir,
        *TEACHER_TRAINING,
        "callbacks.trust.enabled=false",
        candidate="tiny_ref",
    )
    pipeline.train(
        compose("train", [o for o in overrides if not o.startswith(("model@reference", "reference."))])
    )
    return tmp / "models" / "sst2" / "tiny_ref"


def _distill_cfg(tmp: Path, tiny: Path, data: Path, teacher: Path, *extra: str, epochs: int = 1):
    """train.py's config distilling ``teacher`` (model@reference) into ``student+<compressor>``."""
    overrides = tiny_overrides(tmp, tiny, data, f"trainer.max_epochs={epochs}", candidate="student")
    overrides = [o for o in overrides if not o.startswith("reference.")]
    # no trust callback: it predicts the teacher on the validation split too, which the counts below leave out
    extra = ("callbacks.trust.enabled=false", *extra)
    return compose("train", [*overrides, f"reference.checkpoint={teacher}", "reference.name=teacher", *extra])


def _n_train(cfg) -> int:
    from trustequiv.run.plan import load_task_data

    return len(load_task_data(cfg)["train"])


class Counter:
    """Counts the examples predicted through SequenceClassifier.predict_step (the cached prediction) and the
    forwards of models other than the student during training steps."""

    def __init__(self, monkeypatch):
        from transformers import BertForSequenceClassification

        self.predicted, self.steps, self.other_forwards = 0, 0, 0
        self._in_step, self._student = False, None
        real_predict, real_step = SequenceClassifier.predict_step, DistillationModule.training_step
        real_forward = BertForSequenceClassification.forward

        def predict_step(module, batch, *args, **kwargs):
            self.predicted += int(batch["example_id"].numel())
            return real_predict(module, batch, *args, **kwargs)

        def training_step(module, batch, batch_idx):
            self._in_step, self._student = True, module.model
            self.steps += 1
            try:
                return real_step(module, batch, batch_idx)
            finally:
                self._in_step = False

        def forward(model, *args, **kwargs):
            if self._in_step and model is not self._student:
                self.other_forwards += 1
            return real_forward(model, *args, **kwargs)

        monkeypatch.setattr(SequenceClassifier, "predict_step", predict_step)
        monkeypatch.setattr(DistillationModule, "training_step", training_step)
        monkeypatch.setattr(BertForSequenceClassification, "forward", forward)


def test_teacher_outputs_come_from_the_cache_once(
    tiny_bert, synthetic_data_dir, teacher_dir, tmp_path, monkeypatch
):
    """Two epochs of distillation: the teacher predicts each training example once, before training, and
    never runs during it; a second distillation from the same teacher predicts nothing."""
    count = Counter(monkeypatch)
    cfg = _distill_cfg(tmp_path, tiny_bert, synthetic_data_dir, teacher_dir, "compressor=distill", epochs=2)
    result = pipeline.train(cfg)
    n_train = _n_train(cfg)
    assert count.predicted == n_train and count.other_forwards == 0
    assert count.steps == 2 * -(-n_train // 16)
    out = Path(result["checkpoint"])
    assert out.name == "student+distill"
    meta = json.loads((out / "trustequiv.json").read_text())
    assert meta["compression"]["student"] == "layer_drop" and meta["base_checkpoint"] == str(teacher_dir)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1

    count.predicted = 0
    pipeline.train(
        _distill_cfg(
            tmp_path, tiny_bert, synthetic_data_dir, teacher_dir, "compressor=distill", "overwrite=true"
        )
    )
    assert count.predicted == 0


def test_explanation_term_runs_the_teacher_once_per_step(
    tiny_bert, synthetic_data_dir, teacher_dir, tmp_path, monkeypatch
):
    count = Counter(monkeypatch)
    cfg = _distill_cfg(
        tmp_path,
        tiny_bert,
        synthetic_data_dir,
        teacher_dir,
        "compressor=distill_trust",
        "trainer.limit_train_batches=4",
    )
    pipeline.train(cfg)
    assert count.steps == 4 and count.other_forwards == 4
    assert (tmp_path / "models" / "sst2" / "student+distill_trust" / "config.json").exists()


def test_pretrained_student_resumes_after_a_kill(
    tiny_bert, synthetic_data_dir, teacher_dir, tmp_path, monkeypatch, caplog
):
    """A narrower pretrained student (a learned projection for the cosine representation term): killed
    after its first epoch, the same command resumes, projection and all, without predicting the teacher."""
    caplog.set_level(logging.INFO)
    narrow = write_tiny_bert(tmp_path / "narrow", layers=1, hidden=16)
    cfg = _distill_cfg(
        tmp_path,
        tiny_bert,
        synthetic_data_dir,
        teacher_dir,
        "compressor=distill",
        f"compressor.student={narrow}",
        "compressor.representation_weight=1.0",
        epochs=2,
    )
    real = training.ModelCheckpoint.on_train_epoch_end

    def dying(self, trainer, module):
        real(self, trainer, module)
        if trainer.current_epoch == 0:
            raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(training.ModelCheckpoint, "on_train_epoch_end", dying)
        with pytest.raises(RuntimeError, match="killed"):
            pipeline.train(cfg)
    last = (
        tmp_path
        / "models"
        / "sst2"
        / "student+distill.training"
        / training.RESUME_DIR
        / training.LAST_CHECKPOINT
    )
    state = torch.load(last, weights_only=True)
    assert "projection.weight" in state["state_dict"] and state["state_dict"]["projection.weight"].shape == (
        32,
        16,
    )
    caplog.clear()
    count = Counter(monkeypatch)
    pipeline.train(cfg)
    assert any("resuming fine-tuning of student+distill" in r.getMessage() for r in caplog.records)
    assert count.predicted == 0 and count.steps == -(-_n_train(cfg) // 16)  # the second epoch only
    out = tmp_path / "models" / "sst2" / "student+distill"
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 16


def test_reference_is_a_teacher_for_distill_only(tiny_bert, synthetic_data_dir, teacher_dir, tmp_path):
    cfg = _distill_cfg(tmp_path, tiny_bert, synthetic_data_dir, teacher_dir, "compressor=layer_drop")
    with pytest.raises(ValueError, match="model@reference=teacher names a teacher"):
        pipeline.train(cfg)


def test_distilled_candidate_evaluates_through_the_pipeline(
    tiny_bert, synthetic_data_dir, teacher_dir, tmp_path
):
    """evaluate.py compressor=distill: the candidate distilled from the reference (its base) and compared."""
    overrides = tiny_overrides(
        tmp_path,
        tiny_bert,
        synthetic_data_dir,
        "train_missing=true",
        "compressor=distill",
        "trainer.max_epochs=1",
        f"reference.checkpoint={teacher_dir}",
        f"model.checkpoint={teacher_dir}",
        candidate="tiny_ref",
    )
    result = pipeline.evaluate(compose("evaluate", overrides))
    metrics = json.loads((Path(result["output_dir"]) / "results.json").read_text())["metrics"]
    assert "errors/tiny_ref_vs_tiny_ref+distill/error_jaccard" in metrics
    assert metrics["calibration/tiny_ref/accuracy"] > 0.9  # a teacher that has learnt the task
    assert metrics["calibration/tiny_ref+distill/accuracy"] > 0.8
