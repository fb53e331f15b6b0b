"""Running an attack over examples: one JSON record per example, appended to a JSONL file as soon as it is
finished (a killed run resumes with the examples not done), in process or in forked worker processes, with
a progress line at most once a minute."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

STATUS_OF = {
    "SuccessfulAttackResult": "success",
    "FailedAttackResult": "failed",
    "SkippedAttackResult": "skipped",
    "MaximizedAttackResult": "success",
}


# ---------------------------------------------------------------- one example
def _example(text_a: str, text_b: str | None, pair: bool):
    if pair:
        return OrderedDict([("premise", text_a), ("hypothesis", text_b)])
    return OrderedDict([("text", text_a)])


def _texts(attacked_text: Any) -> list[str]:
    return list(attacked_text._text_input.values())


def result_record(result: Any, example_id: int, label: int, seconds: float) -> dict[str, Any]:
    """A JSON-serialisable record of one TextAttack result."""
    status = STATUS_OF.get(type(result).__name__, "failed")
    orig = result.original_result
    rec: dict[str, Any] = {
        "id": int(example_id),
        "label": int(label),
        "status": status,
        "original_pred": int(orig.output),
        "n_queries": int(result.perturbed_result.num_queries),
        "n_words": len(orig.attacked_text.words),
        "seconds": round(seconds, 3),
    }
    if status == "success":
        adv = result.perturbed_result.attacked_text
        changed = sorted(int(i) for i in orig.attacked_text.all_words_diff(adv))
        rec.update(
            adv_texts=_texts(adv),
            adv_pred=int(result.perturbed_result.output),
            perturbed_indices=changed,
            perturbed_words=[orig.attacked_text.words[i] for i in changed],
            perturbed_share=len(changed) / max(1, len(orig.attacked_text.words)),
        )
    return rec


# ---------------------------------------------------------------- parallel workers (fork)
_WORKER: dict[str, Any] = {}


def _worker_init() -> None:

    torch.set_num_threads(1)
    # The parent's tokenizer thread pool does not survive fork: encode serially in the child (else deadlock).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _worker_attack(job: tuple[int, int, str, str | None]) -> dict[str, Any]:
    example_id, label, text_a, text_b = job
    started = time.time()
    attack = _WORKER["attack"]
    result = attack.attack(_example(text_a, text_b, _WORKER["pair"]), label)
    rec = result_record(result, example_id, label, time.time() - started)
    # All queries spent (the perturbed result's count stops at the best text found, less for a failed search).
    total = getattr(getattr(attack, "goal_function", None), "num_queries", None)
    if isinstance(total, int):
        rec["n_queries_total"] = max(total, rec["n_queries"])
    return rec


def reusable_under_budget(rec: Mapping[str, Any], budget: int) -> bool:
    """Whether an outcome found with no query budget is exactly what a run with ``budget`` finds.

    TextAttack's goal function only cuts a query list once the running count would pass the budget, so a
    search that spent fewer than ``budget`` queries in all never met it: same trajectory, same outcome.
    A success's count is its total (the search stops there); a skipped example costs one query; a failed
    search's total is known only from records that store ``n_queries_total``.
    """
    status = rec.get("status")
    if status == "skipped":
        return True
    if status == "success":
        return int(rec["n_queries"]) < budget
    total = rec.get("n_queries_total")
    return total is not None and int(total) < budget


def read_jsonl(path: Path) -> dict[int, dict[str, Any]]:
    """Records already finished in ``path`` (a truncated last line from a killed run is ignored)."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[int(rec["id"])] = rec
    return done


class _Progress:
    """A log line at most every ``every`` seconds (and at the end): attacks on long texts take minutes
    each, and the line reaches log files, where a terminal progress bar would not."""

    def __init__(self, total: int, every: float = 60.0) -> None:
        self.total, self.every, self.n = total, every, 0
        self.counts: dict[str, int] = {}
        self.started = self.last = time.time()

    def update(self, rec: Mapping[str, Any]) -> None:
        self.n += 1
        self.counts[rec["status"]] = self.counts.get(rec["status"], 0) + 1
        now = time.time()
        if now - self.last >= self.every or self.n == self.total:
            self.last = now
            rate = (now - self.started) / self.n
            log.info(
                "attack: %d of %d (%s), %.1f s per example, ~%.0f min to go",
                self.n,
                self.total,
                ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())),
                rate,
                rate * (self.total - self.n) / 60,
            )


def run_attack(
    attack: Any,
    jobs: Sequence[tuple[int, int, str, str | None]],
    *,
    pair: bool,
    jsonl: Path,
    num_workers: int = 1,
    reuse: Mapping[int, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Attack every ``(id, label, text_a, text_b)`` job not already in ``jsonl``; append each finished record
    to ``jsonl`` at once; return all records in job order. ``reuse``: records by id that are valid for this
    attack without running it (copied into ``jsonl``, marked ``"reused": true``)."""
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    done = read_jsonl(jsonl)
    todo = [j for j in jobs if j[0] not in done]
    log.info("attack: %d of %d examples done before, %d to go", len(jobs) - len(todo), len(jobs), len(todo))
    _WORKER.update(attack=attack, pair=pair)
    with jsonl.open("a") as fh:
        if reuse:
            copied = [j for j in todo if j[0] in reuse]
            for job in copied:
                rec = {**reuse[job[0]], "reused": True}
                fh.write(json.dumps(rec) + "\n")
                done[job[0]] = rec
            fh.flush()
            todo = [j for j in todo if j[0] not in reuse]
            if copied:
                log.info(
                    "attack: %d outcomes reused from the unbudgeted run, %d to go",
                    len(copied),
                    len(todo),
                )
        progress = _Progress(len(todo))
        if num_workers > 1 and len(todo) > 1:
            with mp.get_context("fork").Pool(num_workers, initializer=_worker_init) as pool:
                for rec in pool.imap_unordered(_worker_attack, todo):
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                    done[rec["id"]] = rec
                    progress.update(rec)
        else:
            for job in todo:
                rec = _worker_attack(job)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                done[rec["id"]] = rec
                progress.update(rec)
    return [done[j[0]] for j in jobs]
