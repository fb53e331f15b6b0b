"""report.html: flipped examples, escaping, embedded figures, the verdict card, the pipeline writes it, and a
real headless Chromium renders it."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import compose, tiny_overrides, write_classifier, write_tiny_bert
from datasets import Dataset
from PIL import Image

from trustequiv.outputs import ModelOutputs
from trustequiv.report.html import flipped_examples, render_html, write_html_report
from trustequiv.run import pipeline

NAMES = ("negative", "positive")
EVIL = "<script>alert('x')</script> & \"quoted\""
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def outputs(name: str, p_positive: list[float], labels: list[int], ids: list[int]) -> ModelOutputs:
    p = torch.tensor(p_positive, dtype=torch.float64)
    logits = torch.stack([torch.log1p(-p), torch.log(p)], dim=1).float()
    return ModelOutputs(name, torch.tensor(ids), logits, torch.tensor(labels), NAMES)


@pytest.fixture
def pair_data():
    """6 examples; the candidate loses ids 11, 12, 13 (confidence .9, .7, .95) and gains 14."""
    ids = [10, 11, 12, 13, 14, 15]
    labels = [1, 1, 0, 1, 1, 0]
    ref = outputs("ref", [0.9, 0.8, 0.2, 0.6, 0.3, 0.1], labels, ids)
    cand = outputs("cand", [0.9, 0.1, 0.7, 0.05, 0.8, 0.1], labels, ids)
    rows = list(reversed(range(6)))  # the data in another order than the outputs: aligned by id
    data = Dataset.from_dict(
        {
            "id": [ids[i] for i in rows],
            "text_a": [EVIL if ids[i] == 11 else f"a{ids[i]}" for i in rows],
            "text_b": [f"b{ids[i]}" for i in rows],
            "label": [labels[i] for i in rows],
        }
    )
    return ref, cand, data


def test_flipped_examples_directions_order_and_cap(pair_data):
    ref, cand, data = pair_data
    rows = flipped_examples(ref, cand, data, NAMES)
    lost = [r for r in rows if r["direction"] == "correct_to_wrong"]
    gained = [r for r in rows if r["direction"] == "wrong_to_correct"]
    assert [r["example_id"] for r in lost] == [13, 11, 12]  # candidate's confidence .95, .9, .7
    assert [r["example_id"] for r in gained] == [14]
    first = lost[0]
    assert first["texts"] == {"text_a": "a13", "text_b": "b13"}
    assert (first["gold"], first["reference_prediction"], first["candidate_prediction"]) == (
        "positive",
        "positive",
        "negative",
    )
    assert first["reference_confidence"] == pytest.approx(0.6, rel=1e-5)
    assert first["candidate_confidence"] == pytest.approx(0.95, rel=1e-5)
    capped = flipped_examples(ref, cand, data, NAMES, limit=2)
    assert [r["example_id"] for r in capped if r["direction"] == "correct_to_wrong"] == [13, 11]
    assert all(r["direction_total"] == 3 for r in capped if r["direction"] == "correct_to_wrong")


def test_flipped_examples_of_an_error_set(pair_data):
    ref, _, data = pair_data
    ids = ref.example_ids
    correct = torch.tensor([True, False, True, False, True, True])
    errors_only = ModelOutputs("released", ids, None, ref.labels, NAMES, correct=correct)
    rows = flipped_examples(ref, errors_only, data, NAMES)
    assert {r["example_id"] for r in rows} == {11, 13, 14}
    assert all(r["candidate_prediction"] is None and r["candidate_confidence"] is None for r in rows)


def test_flipped_examples_need_the_right_split(pair_data):
    ref, cand, data = pair_data
    with pytest.raises(ValueError, match="not in the data given"):
        flipped_examples(ref, cand, data.filter(lambda r: r["id"] != 13), NAMES)


def png(path: Path, color: str = "tab:blue") -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5))
    fig.subplots().plot([0, 1], [0, 1], color=color)
    fig.savefig(path, dpi=60)
    return path


def results(verdict: bool = True) -> dict:
    pair, replica = "ref_vs_cand", "ref_vs_ref+seed1"
    out = {
        "metrics": {
            "calibration/ref/ece_uniform": 0.03,
            "calibration/ref/ece_uniform_ci_low": 0.01,
            "calibration/ref/ece_uniform_ci_high": 0.05,
            "calibration/cand/ece_uniform": 0.04,
            "calibration/ref+seed1/ece_uniform": 0.035,
            f"calibration/{pair}/ece_uniform_diff": 0.01,
            f"calibration/{pair}/ece_uniform_diff_ci_low": -0.02,
            f"calibration/{pair}/ece_uniform_diff_ci_high": 0.04,
            f"errors/{pair}/error_jaccard": 0.5,
            f"errors/{replica}/error_jaccard": 0.6,
            f"errors/{pair}/flip_rate": None,
            "validation/errors/ref/accuracy": 0.9,
        },
        "task": "sst2",
        "splits": ["test", "validation"],
        "reference": "ref",
        "candidates": ["cand", "ref+seed1"],
        "models": {"ref": {}, "cand": {}, "ref+seed1": {}},
        "notes": {"calibration": [f"note with {EVIL}"], "attribution/skipped": ["needs gradients"]},
        "noise_floor": {"models": ["ref+seed1"]},
    }
    if verdict:
        out["verdict"] = {
            "cand": {
                "overall": "not_equivalent",
                "errors": "not_equivalent",
                "calibration": "inconclusive",
                "representation": "equivalent",
                "statistics": {
                    "errors/error_jaccard": {  # as trustequiv.verdict.verdict.judge writes it
                        "estimate": 0.5,
                        "estimate_low": 0.45,
                        "estimate_high": 0.55,
                        "floor": 0.6,
                        "floor_low": 0.55,
                        "floor_high": 0.65,
                        "shortfall": 0.1,
                        "tested": "shortfall",
                        "low": 0.07,
                        "high": 0.13,
                        "level": 0.9,
                        "margin": 0.05,
                        "mode": "noise_floor",
                        "decision": "not_equivalent",
                        "alike": "higher",
                        "n_examples": 64,
                    },
                    "calibration/abs_ece_uniform_diff": {  # no tested quantity: low/high are the estimate's
                        "estimate": 0.01,
                        "low": -0.02,
                        "high": 0.04,
                        "margin": 0.02,
                        "mode": "absolute",
                        "decision": "inconclusive",
                        "alike": "lower",
                        "n_examples": None,
                    },
                },
                "notes": ["judged against 1 replica"],
            }
        }
    return out


@pytest.fixture
def page(pair_data, tmp_path):
    ref, cand, data = pair_data
    figures = {
        "calibration_reliability": png(tmp_path / "rel.png"),
        "validation/errors_heatmap": png(tmp_path / "heat.png", "tab:red"),
    }
    flips = {"cand": flipped_examples(ref, cand, data, NAMES)}
    headline = {"calibration": (["ece_uniform"], ["ece_uniform_diff"]), "errors": ([], ["error_jaccard"])}
    return render_html(results(), figures, flips, f"ref vs cand {EVIL}", headline=headline), figures


def test_render_escapes_every_text(page):
    html, _ = page
    assert "<script" not in html and "alert('x')" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html  # title, note and text_a
    assert html.count("&lt;script&gt;") >= 3
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched from the net


def test_render_embeds_figures_as_png_data_uris(page):
    html, figures = page
    uris = DATA_URI.findall(html)
    assert len(uris) == len(figures)
    for uri in uris:
        with Image.open(io.BytesIO(base64.b64decode(uri))) as im:
            assert im.format == "PNG" and im.size[0] > 10
    # each figure in its characteristic's section: validation/errors after calibration
    assert html.index('id="c-calibration"') < html.index(uris[0]) < html.index('id="c-validation-errors"')


def test_render_verdict_card_and_tables(page):
    html, _ = page
    verdict = html[html.index('id="verdict"') : html.index('id="c-calibration"')]
    assert (
        "\u2718 not equivalent" in verdict and "? inconclusive" in verdict and "\u2714 equivalent" in verdict
    )
    assert 'class="badge big ne"' in verdict
    assert "errors/error_jaccard" in verdict and '0.5000 <span class="ci">[0.4500, 0.5500]' in verdict
    assert '0.6000 <span class="ci">[0.5500, 0.6500]' in verdict  # the noise floor
    assert "shortfall 0.1000 [0.0700, 0.1300] (90%)" in verdict and "0.0500" in verdict
    assert '0.0100 <span class="ci">[-0.0200, 0.0400]' in verdict
    assert '<td class="num">\u2014' in verdict  # no floor in absolute mode
    assert html.index('id="verdict"') < html.index('id="c-calibration"') < html.index('id="flips"')
    # headline tables with intervals; the replica is tagged; a null metric reads n/a
    assert '0.0300 <span class="ci">[0.0100, 0.0500]</span>' in html
    assert 'ref+seed1 <span class="tag">(noise-floor replica)</span>' in html
    assert "attribution/skipped: needs gradients" in html
    flips = html[html.index('id="flips"') :]
    assert "reference right, candidate wrong: 3 examples" in flips and "<details>" in flips
    assert flips.index("a13") < flips.index("&lt;script&gt;") < flips.index("a12")  # by confidence


def test_render_without_verdict(pair_data):
    html = render_html(results(verdict=False), {}, {}, "no verdict here")
    assert "verdict was not computed for this run (verdict disabled)" in html
    disabled = {**results(verdict=False), "verdict": {}}  # what judge() returns when disabled
    assert "verdict disabled" in render_html(disabled, {}, {}, "t")
    assert "No candidate to compare." in html


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_bert, synthetic_data_dir) -> Path:
    """evaluate on two different random-head tiny classifiers (no fine-tuning: they disagree often)."""
    tmp = tmp_path_factory.mktemp("html_e2e")
    write_classifier(tiny_bert, tmp / "models" / "sst2" / "tiny_ref")
    write_classifier(write_tiny_bert(tmp / "other_bert", seed=1), tmp / "models" / "sst2" / "tiny_cand")
    cfg = compose("evaluate", tiny_overrides(tmp, tiny_bert, synthetic_data_dir))
    return Path(pipeline.evaluate(cfg)["output_dir"])


def test_pipeline_writes_report_html(run_dir):
    html = (run_dir / "report.html").read_text()
    pngs = sorted((run_dir / "figures").rglob("*.png"))
    assert pngs and len(DATA_URI.findall(html)) == len(pngs)
    assert 'id="verdict"' in html and 'id="c-calibration"' in html and 'id="c-errors"' in html
    assert "<h3>tiny_cand</h3>" in html and "error_jaccard" in html
    assert "reference right, candidate wrong: 0 examples" not in html  # two random heads disagree
    assert "<script" not in html


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")


def headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    cmd += [f"--user-data-dir={profile}", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)


def test_chromium_renders_the_page(page, tmp_path):
    binary = chromium()
    html, _ = page
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    dom = headless(binary, tmp_path / "profile", "--dump-dom", path.as_uri()).stdout
    assert "\u2718 not equivalent" in dom and "errors/error_jaccard" in dom
    assert "&lt;script&gt;alert" in dom and "<script>alert" not in dom  # stayed text in the parsed DOM
    assert len(DATA_URI.findall(dom)) == 2
    shot = tmp_path / "shot.png"
    headless(binary, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,900", path.as_uri())
    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20  # text, badges and the figures drew something


def test_write_html_report(pair_data, tmp_path):
    write_html_report(tmp_path / "r.html", results(), {}, {}, "t")
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
