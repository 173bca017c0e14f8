"""Tests for plm_tune.after_training.report: the HTML file is parsed back, then opened in a real headless Chromium.

Media are real: a PIL image, a video given as frames, a CT slice and a multi-frame MR series shipped with
pydicom, and a text-only sample whose answer tries to inject a ``<script>``. The browser test reads back
how many ``<img>`` the browser decoded and saves a screenshot (also copied to
``/tmp/plm-report-screenshot.png`` for a human to look at).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import make_frames, make_image
from PIL import Image

from plm_tune.after_training.report import rank_records, write_report
from plm_tune.inference.evaluation import EvalRecord, EvalResult
from plm_tune.inference.metrics import bleu_signatures

pydicom_data = pytest.importorskip("pydicom.data")

SCREENSHOT_COPY = Path("/tmp/plm-report-screenshot.png")
METRICS = {"exact_match": 0.4, "corpus_bleu": 0.31, "rouge_l": 0.52, "eval_loss": 1.25}
BASE_METRICS = {"exact_match": 0.1, "corpus_bleu": 0.12, "rouge_l": 0.3, "eval_loss": 2.5}
INJECTION = "<script>alert(1)</script>"
CONTROL = "\x07\x1b[0m\x00"  # a bell, an ANSI escape and a NUL, as random models print
TRAINING = {"method": "lora", "train_samples": 105, "datasets": ["pydicom-testdata"], "global_step": 40,
            "train_seconds": 71.4, "log_history": [{"step": s, "loss": 6.8 - 0.1 * s} for s in (1, 5, 10, 15, 20)]
            + [{"step": 0, "eval_loss": 6.9}, {"step": 20, "eval_loss": 5.1}]}
# index -> (finetuned rouge_l, base rouge_l); gains 0.6, -0.2, 0.3, -0.5, 0.0
ROUGE = {0: (0.9, 0.3), 1: (0.2, 0.4), 2: (0.7, 0.4), 3: (0.1, 0.6), 4: (0.5, 0.5)}
FRAMES_IN_STRIP = 6
IMAGES_SHOWN = 1 + FRAMES_IN_STRIP + 1 + FRAMES_IN_STRIP  # photo, 12-frame video, CT slice, 10-frame MR


class _Page(HTMLParser):
    """Start tags in document order, each with the id of the section it sits in, plus all text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str], str | None]] = []
        self.text: list[str] = []
        self._section: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section = attrs.get("id")
        self.tags.append((tag, attrs, self._section))

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a, _ in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    def case_order(self) -> list[tuple[str, int]]:
        return [(section, int(a["data-index"])) for t, a, section in self.tags
                if t == "article" and "case" in a.get("class", "").split()]


def _samples() -> list[dict]:
    ct = pydicom_data.get_testdata_file("CT_small.dcm", download=False)
    mr_series = pydicom_data.get_testdata_file("emri_small.dcm", download=False)  # 10 frames, pydicom-data
    if mr_series is None:
        pytest.skip("pydicom-data (plm-tune[dicom]) ships emri_small.dcm")
    return [
        {"images": [make_image(320, 200, seed=1)], "videos": []},
        {"images": [], "videos": [make_frames(12, size=96, seed=2)]},
        {"images": [ct], "videos": []},
        {"images": [], "videos": []},
        {"images": [], "videos": [mr_series]},
    ]


def _records() -> list[EvalRecord]:
    answers = ["A red square on noise.", "A clip of moving noise.", "Axial CT slice of the abdomen.",
               f"Sure! {INJECTION} done", f"MR series,{CONTROL} ten frames."]
    return [
        EvalRecord(index=i, sample_id=f"s{i}", prompt=f"Question {i}: what is shown?", reference=f"Reference {i}.",
                   answer=answers[i], base_answer=f"base answer {i}",
                   scores={"exact_match": float(i % 2), "rouge_l": ROUGE[i][0]},
                   base_scores={"exact_match": 0.0, "rouge_l": ROUGE[i][1]})
        for i in range(5)
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, EvalResult, list[dict]]:
    result = EvalResult(metrics=dict(METRICS), records=_records(), base_metrics=dict(BASE_METRICS),
                        info={"model": "facebook/Perception-LM-1B", "adapter": "runs/radiology/adapter",
                              "timings": {"generate_s": 12.5}, "answered": 5, "training": TRAINING,
                              "base_generation_seconds": 1.027413005000085,
                              "sacrebleu_signature": bleu_signatures()})
    samples = _samples()
    path = write_report(result, samples, tmp_path_factory.mktemp("report") / "out" / "report.html",
                        title="radiology LoRA <eval>", frames_per_video=FRAMES_IN_STRIP, self_check=True)
    return path, result, samples


def test_metrics_table_has_one_row_per_metric_with_base_finetuned_and_change(report):
    path, _, _ = report
    page = _Page(path.read_text())
    assert [a["data-metric"] for a in page.find("tr") if "data-metric" in a] == list(METRICS)
    html = path.read_text()
    row = re.search(r'<tr data-metric="rouge_l">(.*?)</tr>', html).group(1)
    assert re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", row) == ["rouge_l", "0.3", "0.52", "+0.22"]
    # eval_loss went down: an improvement, so it is coloured as one.
    assert re.search(r'<tr data-metric="eval_loss">.*?<td class="change up">-1.25</td>', html)


def test_bleu_rows_are_explained_with_sacrebleus_signatures(report):
    path, _, _ = report
    html = path.read_text()
    note = re.search(r'<p id="bleu-signature">(.*?)</p>', html).group(1)
    assert "divided by 100" in note
    for name, signature in bleu_signatures().items():
        assert f"{name} <code>{signature}</code>" in note  # e.g. nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|...
    assert html.index('id="metrics"') < html.index('id="bleu-signature"') < html.index('id="best"')
    assert 'data-key="sacrebleu_signature"' not in html  # said once, under the table, not again in the details


def test_every_image_is_an_embedded_thumbnail_and_nothing_is_fetched(report):
    path, _, _ = report
    page = _Page(path.read_text())
    images = page.find("img")
    assert len(images) == IMAGES_SHOWN
    for attrs in images:
        prefix = "data:image/jpeg;base64,"
        assert attrs["src"].startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(attrs["src"][len(prefix):]))) as thumb:
            assert max(thumb.size) <= 256
    assert all(a["src"].startswith("data:") for t, a, _ in page.tags if "src" in a)
    assert not [a for t, a, _ in page.tags if "href" in a] and "url(" not in path.read_text()
    # The CT slice (second still image on the page: cases #0, #2 lead) is a real render, not a flat placeholder.
    ct = page.find("img", alt="image 0")[1]["src"].split(",", 1)[1]
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(ct))).convert("L")).std() > 20


def test_text_is_escaped_so_answers_cannot_inject_markup(report):
    path, _, _ = report
    html = path.read_text()
    assert INJECTION not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<title>radiology LoRA &lt;eval&gt;</title>" in html
    page = _Page(html)
    assert len(page.find("script")) == 1  # only the self-check, written because self_check=True
    assert any(INJECTION in text for text in page.text)  # shown to the reader as text


def test_gallery_shows_best_cases_then_worst_with_media_prompt_answers_and_scores(report):
    path, result, _ = report
    page = _Page(path.read_text())
    # gains: #0 +0.6, #2 +0.3, #4 0, #1 -0.2, #3 -0.5; the worst section starts with the worst case
    assert page.case_order() == [("best", 0), ("best", 2), ("best", 4), ("worst", 3), ("worst", 1)]
    assert "Best cases (highest gain in rouge_l over the base model)" in page.text
    assert "Worst cases (lowest gain in rouge_l over the base model)" in page.text
    assert len(page.find("div", **{"class": "answer base"})) == len(result.records)
    assert "Question 2: what is shown?" in page.text and "Reference 2." in page.text
    assert "base answer 2" in page.text and "Axial CT slice of the abdomen." in page.text
    assert len(page.find("tr", **{"data-score": "rouge_l"})) == len(result.records)
    assert page.find("p", **{"class": "none"})  # the text-only sample says so
    assert not page.find("div", **{"class": "media-error"})
    assert "facebook/Perception-LM-1B" in page.text and '{"generate_s": 12.5}' in page.text


def test_without_a_base_model_the_base_column_is_a_dash_and_cases_rank_by_finetuned_score(tmp_path):
    records = [EvalRecord(index=i, sample_id=None, prompt="q", reference=None, answer=f"a{i}",
                          scores={"sentence_bleu": s}) for i, s in enumerate([0.2, 0.9, 0.5, 0.1])]
    result = EvalResult(metrics={"sentence_bleu": 0.425}, records=records)
    html = write_report(result, [{}] * 4, tmp_path / "report.html").read_text()
    page = _Page(html)
    row = re.search(r'<tr data-metric="sentence_bleu">(.*?)</tr>', html).group(1)
    assert re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", row) == ["sentence_bleu", "\u2014", "0.425", "\u2014"]
    assert page.case_order() == [("best", 1), ("best", 2), ("worst", 3), ("worst", 0)]
    assert "Best cases (highest finetuned sentence_bleu)" in page.text
    assert not page.find("p", id="bleu-signature")  # no signature recorded: no claim about the settings
    assert not page.find("div", **{"class": "answer base"}) and not page.find("script")


def test_max_samples_keeps_the_extremes_and_unscored_records_fill_what_is_left():
    records = [EvalRecord(index=i, sample_id=None, prompt="q", reference="r", answer="a",
                          scores={"rouge_l": i / 10}, base_scores={"rouge_l": 0.0}) for i in range(10)]
    records.append(EvalRecord(index=10, sample_id=None, prompt="q", reference="r", answer="a"))
    result = EvalResult(metrics={}, records=records, base_metrics={})
    metric, sections = rank_records(result, max_samples=4)
    assert metric == "rouge_l"
    assert [(sid, [r.index for r in rs]) for sid, _, rs in sections] == [("best", [9, 8]), ("worst", [0, 1]),
                                                                        ("unscored", [])]
    _, sections = rank_records(result, max_samples=12)
    assert [r.index for r in sections[2][2]] == [10]


def test_missing_or_unreadable_media_shows_a_placeholder_with_the_error(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    samples = [{"images": [str(tmp_path / "missing.png"), str(broken)], "videos": [{"path": "/no/clip.mp4"}]}]
    records = [EvalRecord(index=i, sample_id=None, prompt="q", reference="r", answer="a",
                          scores={"sentence_bleu": 0.5}) for i in (0, 7)]  # sample 7 does not exist
    result = EvalResult(metrics={"sentence_bleu": 0.5}, records=records)
    html = write_report(result, samples, tmp_path / "r.html").read_text()
    page = _Page(html)
    errors = [t for t in page.text if t.startswith("could not show")]
    assert len(page.find("div", **{"class": "media-error"})) == len(errors) == 4
    assert "missing.png' does not exist" in errors[0] and "Could not decode image file" in errors[1]
    assert "/no/clip.mp4' does not exist" in errors[2] and "sample 7 is not in the samples given" in errors[3]
    assert page.find("p", id="media-warning")


def test_the_page_opens_with_a_human_summary_and_a_loss_curve(report):
    path, _, _ = report
    html = path.read_text()
    page = _Page(html)
    facts = {a["data-fact"] for a in page.find("li") if "data-fact" in a}
    assert facts == {"trained", "data", "time", "change"}
    text = " ".join(page.text)
    assert "Trained a LoRA adapter on facebook/Perception-LM-1B, saved in runs/radiology/adapter." in text
    assert "105 training samples from pydicom-testdata; evaluated on 5 held-out samples." in text
    assert "40 optimizer steps in 1 min 11 s." in text
    assert "Held-out: exact_match 0.1 (base) \u2192 0.4 (finetuned); eval_loss 2.5 (base) \u2192 1.25" in text
    # The summary comes before the metrics table and the raw facts, which are folded and rounded.
    assert html.index('id="summary"') < html.index('id="metrics"') and html.index('id="details"') < html.index(
        'id="metrics"')
    assert "1.027" in text and "1.027413" not in html
    # One path per loss series, one dot per logged value, plus the axes.
    assert len(page.find("path", **{"class": "loss"})) == len(page.find("path", **{"class": "eval_loss"})) == 1
    assert len(page.find("circle")) == 7 and page.find("path", **{"class": "axes"})


def test_control_characters_never_reach_the_page(report):
    path, _, _ = report
    html = path.read_text()
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", html)
    assert "MR series,\\x07\\x1b[0m\\x00 ten frames." in html  # shown as visible escapes


def test_without_training_facts_the_summary_says_only_what_is_known(tmp_path):
    result = EvalResult(metrics={"rouge_l": 0.5}, records=_records()[:1], info={"model": "m"})
    html = write_report(result, _samples()[:1], tmp_path / "r.html").read_text()
    page = _Page(html)
    assert {a["data-fact"] for a in page.find("li") if "data-fact" in a} == {"trained", "data", "change"}
    assert "rouge_l 0.5 (finetuned; no base model evaluated)" in " ".join(page.text)
    assert "<svg" not in html  # no log history, no curve


def test_a_class_like_split_states_the_most_common_answer_baseline(tmp_path):
    records = [EvalRecord(index=i, sample_id=None, prompt="Modality?", reference=ref, answer="CT",
                          scores={"exact_match": float(ref == "CT")})
               for i, ref in enumerate(["OT", "OT", "OT", "CT", "MR", "CT"])]
    result = EvalResult(metrics={"exact_match": 2 / 6}, records=records, info={"answered": 6})
    html = write_report(result, [{} for _ in records], tmp_path / "r.html").read_text()
    assert "always answering the most common reference (&#x27;OT&#x27;) would score 0.5" in html


@pytest.mark.parametrize("bad", [{"max_samples": 0}, {"frames_per_video": 0}, {"thumb_size": 8}])
def test_out_of_range_options_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        write_report(EvalResult(metrics={}, records=[]), [], tmp_path / "r.html", **bad)


def _chromium() -> str:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
    if found is None:
        pytest.skip("no Chromium binary found; install Debian's chromium: apt-get install chromium")
    return found


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # Everything that would reach the network or a GPU is off: the page is a local, self-contained file.
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-3000:]}"
    return done


def test_chromium_decodes_every_image_and_renders_a_non_blank_page(report, tmp_path):
    binary = _chromium()
    path, _, _ = report
    url = path.resolve().as_uri()

    dom = _run_chromium(binary, tmp_path / "profile-dom", "--virtual-time-budget=5000", "--dump-dom", url).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    counts = {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', body)}
    assert counts == {"images-total": IMAGES_SHOWN, "images-ok": IMAGES_SHOWN, "metric-rows": len(METRICS)}
    assert "alert(1)" not in re.sub(r"&lt;script&gt;alert\(1\)&lt;/script&gt;", "", dom)
    # The browser's own DOM: the summary's sentences, an SVG whose loss path has points, no control byte.
    assert "Trained a LoRA adapter on facebook/Perception-LM-1B" in dom and "40 optimizer steps" in dom
    curve = re.search(r'<svg id="loss-curve".*?</svg>', dom, re.S).group(0)
    assert re.search(r'<path class="loss" d="M[\d.]+,[\d.]+( L[\d.]+,[\d.]+){4}"', curve)
    assert "\x07" not in dom and "\x1b" not in dom

    shot = tmp_path / "report.png"
    _run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert shot.exists()
    shutil.copyfile(shot, SCREENSHOT_COPY)
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        grey = np.asarray(image.convert("L"), dtype=np.float32)
    # A blank page is one flat colour; the rendered one has text, tables and thumbnails across it.
    assert grey.std() > 15
    assert (np.abs(grey - np.median(grey)) > 30).mean() > 0.05
