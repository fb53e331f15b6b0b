"""Errors a person can act on: known failures end in ONE line, ``error: <what> - fix: <how>``, on stderr with
exit status 2 (the traceback only with HYDRA_FULL_ERROR=1); anything else keeps its traceback.

The entry points run in a subprocess for what happens around Hydra (config composition, the exit status, the
one line); the rest goes through ``pipeline.evaluate`` and :func:`trustequiv.user_errors.one_line`, the
handler
the entry points use."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, compose, tiny_overrides

from trustequiv import user_errors as errors
from trustequiv.cache import not_readable, not_writable
from trustequiv.conf_tree import available
from trustequiv.config import check_config
from trustequiv.run import pipeline
from trustequiv.user_errors import HubUnreachableError, UserError, one_line

LABELS = ["negative", "positive"]
# No server listens on the discard port of the loopback interface: connection refused at once.
DEAD_ENDPOINT = "http://127.0.0.1:9"


def assert_one_line(line: str | None) -> str:
    assert line is not None, "a known failure must give its one line"
    assert "\n" not in line and line.startswith("error: ") and " - fix: " in line, line
    return line


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    """Checkpoints made by code from the tiny BERT: a classifier of the task (the one reused everywhere),
    an extractive QA model, a 3-class head with generic names, and a copy with truncated weights."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForQuestionAnswering,
        BertForSequenceClassification,
    )

    root = tmp_path_factory.mktemp("ckpts")
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)

    def save(model, name: str) -> Path:
        model.save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
        return root / name

    id2label = dict(enumerate(LABELS))
    labelled = BertConfig.from_pretrained(
        tiny_bert, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    out = {
        "classifier": save(BertForSequenceClassification(labelled), "classifier"),
        "qa": save(BertForQuestionAnswering(BertConfig.from_pretrained(tiny_bert)), "qa"),
        "three": save(
            BertForSequenceClassification(BertConfig.from_pretrained(tiny_bert, num_labels=3)), "three"
        ),
    }
    truncated = root / "truncated"
    shutil.copytree(out["classifier"], truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out["truncated"] = truncated
    return out


def _overrides(tmp: Path, tiny: Path, data: Path, reference: Path, *extra: str) -> list[str]:
    """tiny_overrides with the given reference checkpoint (the reference loads first: a refusal comes before
    any prediction) and the good classifier as candidate."""
    return tiny_overrides(tmp, tiny, data, f"reference.checkpoint={reference}", *extra)


def _evaluate_error(overrides: list[str]) -> tuple[BaseException, str]:
    with pytest.raises(Exception) as info:
        pipeline.evaluate(compose("evaluate", overrides))
    return info.value, assert_one_line(one_line(info.value))


# ------------------------------------------------------------------------------------------ entry points
def _run(script: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **env})
    return subprocess.run(
        [sys.executable, str(REPO / script), *args, f"paths.log_dir={cwd}/logs", "logger=none"],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def _one_line_exit(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a run that ended in a known failure (status 2)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    return assert_one_line(lines[0])


def test_mistyped_characteristic_lists_the_available_ones(tmp_path):
    """Hydra rejects it before our code runs; its multi-line message becomes the one line."""
    line = _one_line_exit(_run("evaluate.py", ["characteristic=[calibrat]"], tmp_path))
    assert "'calibrat'" in line and all(name in line for name in available("characteristic"))


def test_batch_size_names_the_key(tmp_path):
    line = _one_line_exit(_run("evaluate.py", ["predict.batch_size=0"], tmp_path))
    assert "predict.batch_size=0" in line
    with pytest.raises(ValueError) as info:  # negative too; in-process, a subprocess costs ~10 s
        check_config(compose("evaluate", ["predict.batch_size=-2"]))
    assert "predict.batch_size=-2" in assert_one_line(one_line(info.value))


def test_train_entry_point_reports_the_same_way(tmp_path):
    line = _one_line_exit(_run("train.py", ["task.training.batch_size=0"], tmp_path))
    assert "task.training.batch_size=0" in line


def test_hydra_full_error_shows_the_traceback(tmp_path):
    proc = _run("evaluate.py", ["predict.batch_size=0"], tmp_path, HYDRA_FULL_ERROR="1")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr and "check_config" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: predict.batch_size=0")


def test_unreachable_hub_fails_at_once_with_the_fix(tmp_path, synthetic_data_dir):
    """No retries: the hub client would print "Retrying in 8s" lines to stderr for ~25 s."""
    proc = _run(
        "evaluate.py",
        ["task=sst2", "paths.data_dir=null", f"paths.cache_dir={tmp_path}/cache"],
        tmp_path,
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT=DEAD_ENDPOINT,
    )
    line = _one_line_exit(proc)
    assert DEAD_ENDPOINT in line and "HF_HUB_OFFLINE=1" in line and "paths.data_dir" in line


def test_qa_checkpoint_is_refused_as_a_classifier(tmp_path, tiny_bert, synthetic_data_dir, ckpts):
    """Before: a random classification head on the QA encoder, exit 0."""
    args = _overrides(
        tmp_path, tiny_bert, synthetic_data_dir, ckpts["qa"], f"model.checkpoint={ckpts['classifier']}"
    )
    line = _one_line_exit(_run("evaluate.py", args, tmp_path))
    assert str(ckpts["qa"]) in line and "BertForQuestionAnswering" in line


# ------------------------------------------------------------------------------------------ data files
def _data_copy(tmp_path: Path, synthetic: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    return data


def test_non_utf8_file_names_file_and_line(tmp_path, tiny_bert, synthetic_data_dir):
    data = _data_copy(tmp_path, synthetic_data_dir)
    train = data / "sst2" / "train.tsv"
    lines = train.read_bytes().split(b"\n")
    lines[4] = b"caf\xe9 was good \t1"  # Latin-1, line 5
    train.write_bytes(b"\n".join(lines))
    err, line = _evaluate_error(tiny_overrides(tmp_path, tiny_bert, data))
    assert isinstance(err, ValueError)
    assert f"{train}, line 5: not UTF-8" in line and "0xe9" in line


def test_header_only_file_is_named(tmp_path, tiny_bert, synthetic_data_dir):
    data = _data_copy(tmp_path, synthetic_data_dir)
    dev = data / "sst2" / "dev.tsv"
    dev.write_text("sentence\tlabel\n")
    _, line = _evaluate_error(tiny_overrides(tmp_path, tiny_bert, data))
    assert f"{dev} has a header but no rows" in line
    dev.write_text("")
    _, line = _evaluate_error(tiny_overrides(tmp_path, tiny_bert, data))
    assert f"{dev} is empty" in line


def test_missing_data_names_no_folder_the_user_lacks(tmp_path, tiny_bert):
    _, line = _evaluate_error(tiny_overrides(tmp_path, tiny_bert, tmp_path / "nodata"))
    assert "sst2/dev.tsv not found" in line and "README 'Local data'" in line and "shared" not in line


# ------------------------------------------------------------------------------------------ checkpoints
def test_truncated_weights_are_named(tmp_path, tiny_bert, synthetic_data_dir, ckpts):
    _, line = _evaluate_error(_overrides(tmp_path, tiny_bert, synthetic_data_dir, ckpts["truncated"]))
    assert f"{ckpts['truncated'] / 'model.safetensors'} is corrupt or truncated" in line


def test_head_with_more_classes_than_the_task_is_refused(tmp_path, tiny_bert, synthetic_data_dir, ckpts):
    """Before: the declared names mapped two of the three columns and the third was dropped silently."""
    declared = "reference.label_names=[negative,positive]"
    _, line = _evaluate_error(_overrides(tmp_path, tiny_bert, synthetic_data_dir, ckpts["three"], declared))
    assert "head of 3 classes" in line and "declares 2" in line
    _, line = _evaluate_error(_overrides(tmp_path, tiny_bert, synthetic_data_dir, ckpts["three"]))
    assert "head of 3 classes, the task has 2" in line


def test_encoder_without_a_fine_tuned_head_is_refused(tmp_path, tiny_bert, synthetic_data_dir):
    """A pretrained encoder as checkpoint: transformers would add a random head (and warn in 2 lines)."""
    declared = "reference.label_names=[negative,positive]"
    _, line = _evaluate_error(_overrides(tmp_path, tiny_bert, synthetic_data_dir, tiny_bert, declared))
    assert "no trained BertForSequenceClassification head" in line and "classifier.weight" in line


def test_the_fine_tuned_classifier_loads(ckpts):
    from trustequiv.models.loading import load_classifier

    assert load_classifier(str(ckpts["classifier"]), LABELS).label_permutation == [0, 1]


def test_fine_tuning_still_starts_from_an_encoder_with_a_new_head(tiny_bert):
    from plugins.tasks.classification import new_classifier
    from trustequiv.models.spec import ModelSpec

    model, _ = new_classifier(ModelSpec("m", str(tiny_bert)), {"label_names": LABELS})
    assert model.config.num_labels == 2


# ------------------------------------------------------------------------------------------ config values
def test_limit_examples_and_n_examples_come_out_as_one_line(tmp_path, tiny_bert, synthetic_data_dir):
    from trustequiv.data.sampling import sample_positions

    _, line = _evaluate_error(tiny_overrides(tmp_path, tiny_bert, synthetic_data_dir, "limit_examples=0"))
    assert "limit_examples" in line  # sampling's own check, raised in pipeline.evaluate
    with pytest.raises(ValueError) as info:
        sample_positions([1, 2, 3], -1, key="characteristic.attribution_lime.n_examples")
    assert "n_examples" in assert_one_line(one_line(info.value))
    cfg = compose(
        "evaluate", ["characteristic=[attribution_lime]", "characteristic.attribution_lime.n_examples=0"]
    )
    with pytest.raises(ValueError) as info:
        check_config(cfg)
    assert "characteristic.attribution_lime.n_examples=0" in assert_one_line(one_line(info.value))


@pytest.mark.parametrize(
    ("override", "group"),
    [("task=nope", "task"), ("model=nope", "model"), ("model@reference=nope", "model"),
     ("compressor=nope", "compressor"), ("experiment=nope", "experiment"), ("task=qa/nope", "task")],
)  # fmt: skip
def test_unknown_plugin_names_list_the_available_ones(override, group):
    with pytest.raises(Exception) as info:
        compose("evaluate", [override])
    line = assert_one_line(one_line(info.value))
    assert f"unknown {group} '{override.split('=')[1]}'" in line
    assert all(name in line for name in available(group))  # nested ones too (qa/squad2)


def test_unknown_key_suggests_the_append_syntax():
    with pytest.raises(Exception) as info:
        compose("evaluate", ["predict.batchsize=2"])
    assert "+predict.batchsize=2" in assert_one_line(one_line(info.value))


# ------------------------------------------------------------------------------------------ cache
def test_cache_permission_errors_are_one_line(tmp_path):
    denied = PermissionError(13, "Permission denied")
    line = assert_one_line(one_line(not_writable(tmp_path / "cache" / "x", denied)))
    assert "paths.cache_dir" in line.split(" - fix: ")[1]
    line = assert_one_line(one_line(not_readable(tmp_path / "cache" / "y.json", denied)))
    assert "chmod" in line.split(" - fix: ")[1]


def test_read_only_cache_dir_through_the_pipeline(
    tmp_path, tiny_bert, synthetic_data_dir, ckpts, monkeypatch
):
    """Tests run as root here (chmod denies nothing), so the read-only filesystem is simulated where the
    cache probes its directory."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    args = _overrides(tmp_path, tiny_bert, synthetic_data_dir, ckpts["classifier"])
    _, line = _evaluate_error(args)
    assert str(tmp_path / "cache") in line and "paths.cache_dir" in line.split(" - fix: ")[1]


# ------------------------------------------------------------------------------------------ the hub
def test_hub_probe_refused_and_silent(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", DEAD_ENDPOINT)
    started = time.monotonic()
    with pytest.raises(HubUnreachableError, match=r"Connection refused") as info:
        errors.check_hub("model 'x'", "use a local directory")
    assert time.monotonic() - started < 5 and isinstance(info.value, ConnectionError)

    # A server that accepts and never answers: the probe gives up after its timeout.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(errors, "HUB_PROBE_TIMEOUT", 1.0)
    started = time.monotonic()
    with pytest.raises(HubUnreachableError, match=r"no answer within 1 s"):
        errors.check_hub("model 'x'", "use a local directory")
    assert time.monotonic() - started < 10
    server.close()


def test_unreachable_hub_stops_before_the_hub_clients(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub
    from huggingface_hub import constants

    from trustequiv.models.spec import local_dir

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", DEAD_ENDPOINT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached to fall back on

    def retrying(*args, **kwargs):
        raise AssertionError("the hub client was called although the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", retrying)
    cfg = compose("evaluate", ["task=sst2", "logger=none"])
    with pytest.raises(ConnectionError) as info:
        pipeline.load_task_data(cfg)
    assert "paths.data_dir" in assert_one_line(one_line(info.value)).split(" - fix: ")[1]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", retrying)
    with pytest.raises(HubUnreachableError):
        local_dir("someone/some-model")


# ------------------------------------------------------------------------------------------ the handler
def test_user_error_form_and_pickling():
    err = errors.ConfigError("x=0 is not allowed", "set x=1")
    assert str(err) == "x=0 is not allowed - fix: set x=1" and isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.what, again.fix) == (errors.ConfigError, err.what, err.fix)
    missing = errors.MissingFileError("a not found", "put it there")
    assert isinstance(missing, FileNotFoundError) and str(missing) == "a not found - fix: put it there"
    assert isinstance(UserError("a", "b"), Exception)


def test_wrapped_user_error_keeps_its_own_line():
    try:
        try:
            raise HubUnreachableError("cannot reach the hub", "set paths.data_dir")
        except ConnectionError as inner:
            raise ConnectionError(f"{inner}. Task x loads from the hub") from inner
    except ConnectionError as outer:
        assert one_line(outer) == "error: cannot reach the hub - fix: set paths.data_dir"


@pytest.mark.parametrize(
    ("message", "what", "fix"),
    [
        ("a.tsv not found: task x reads it. Fix: set paths.data_dir=y.", "a.tsv not found: task x reads it",
         "set paths.data_dir=y"),
        ("a already holds a checkpoint: pass overwrite=true to train again", "a already holds a checkpoint",
         "pass overwrite=true to train again"),
        ("unknown model 'x'; available: a, b", "unknown model 'x'", "choose one of: a, b"),
        ("no rule here (e.g. nothing)", "no rule here (e.g. nothing)", "DEFAULT"),
    ],
)  # fmt: skip
def test_existing_messages_split_into_what_and_fix(message, what, fix):
    assert errors.split_message(message, "DEFAULT") == (what, fix)


def test_other_failures_keep_their_traceback():
    import numpy as np

    assert one_line(RuntimeError("a bug")) is None
    try:
        np.zeros(2).reshape(3)  # a ValueError raised outside this project's code
    except ValueError as err:
        assert one_line(err) is None
    assert one_line(FileNotFoundError(2, "No such file or directory", "/x/y")) == (
        "error: No such file or directory: /x/y - fix: check the path, or the setting that names it "
        "(paths.*, model.checkpoint, model.path)"
    )
