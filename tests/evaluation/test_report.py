"""The visual report: every plot exists, is a real PNG, and matches the run it shows."""

from __future__ import annotations

import base64
import io
import math
import pathlib
import re
import struct

import numpy as np
import orjson
import pytest
import yaml
from PIL import Image

from streamweights.cli import main
from streamweights.evaluation.contenders import PipelineContender
from streamweights.evaluation.episode import build_episode
from streamweights.evaluation.metrics import classification_losses, expected_calibration_error
from streamweights.evaluation.streams import suite_streams
from streamweights.evaluation.trace import TraceRecorder, load_trace
from streamweights.report import build_report
from tests.evaluation.chromium import Chromium

REPO = pathlib.Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_KEYS = ["weights", "portfolio", "rolling_loss", "reliability", "class_mix", "coverage",
             "estimate", "pending_throughput"]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def service_run(tmp_path_factory):
    """Scenario: the service runs the demo chain on its own Agrawal replay (14,000 events;
    the default portfolio's drift watch confirms the concept switch near label 11,700)
    with ``--report``. (SEA's milder switch is absorbed by the portfolio without an
    evidenced rise, so it draws no drift marker.)
    We expect: a trace and a report page in the report folder, and a summary to compare
    them with."""
    folder = tmp_path_factory.mktemp("run")
    document = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    document["source"].update({"scenario": "agrawal-recurring", "events": 14_000})
    document["state_dir"] = str(folder / "state")
    document["http"] = {"host": "127.0.0.1", "port": None}
    document["outputs"] = {"adapted": None, "weights": str(folder / "weights.jsonl"),
                           "dead_letter": None}
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(document))
    report_dir = folder / "report"
    code = main(["run", "--config", str(config), "--summary", str(folder / "summary.json"),
                 "--report", str(report_dir)])
    assert code == 0
    summary = orjson.loads((folder / "summary.json").read_bytes())
    return report_dir, summary["streams"]["demo"]


def test_every_plot_is_a_non_empty_png(service_run):
    report_dir, _ = service_run
    for key in PLOT_KEYS:
        data = (report_dir / "plots" / f"0-{key}.png").read_bytes()
        width, height = _png_size(data)
        assert width > 300 and height > 100 and len(data) > 5_000, key


def test_page_embeds_every_plot(service_run):
    report_dir, _ = service_run
    page = (report_dir / "report.html").read_text()
    images = re.findall(r'<figure id="([a-z_]+)"[^>]*><img alt="[^"]*" '
                        r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [key for key, _ in images] == PLOT_KEYS
    for key, encoded in images:
        assert base64.b64decode(encoded) == (report_dir / "plots" / f"0-{key}.png").read_bytes()
    assert "<script" not in page and 'src="http' not in page  # self-contained
    assert "no PriorShift stage" in page  # the demo chain has none, and the page says so


def test_plots_match_the_run(service_run):
    report_dir, stream = service_run
    _, plots = build_report(report_dir)
    drawn = {plot.key: plot.drawn for plot in plots["demo"]}
    trace = load_trace(report_dir).streams[0]
    # drift: as many markers as the run counted alarms, and there was at least one
    assert stream["drift_events"] >= 1
    assert drawn["weights"]["drift_markers"] == stream["drift_events"]
    assert drawn["rolling_loss"]["drift_markers"] == stream["drift_events"]
    assert len(trace.meta["drift_events"]) == stream["drift_events"]
    # one weight line per deployed model; raw models + ensemble + served losses
    assert drawn["weights"]["lines"] == len(stream["models"]) == 3
    # one line per candidate of the portfolio; the last sample is the published weights
    assert drawn["portfolio"]["lines"] == len(trace.meta["candidates"]) == 4
    assert drawn["portfolio"]["drift_markers"] == stream["drift_events"]
    published = stream["weights"]["portfolio"]["weights"]
    assert list(published) == trace.meta["candidates"]
    np.testing.assert_allclose(trace.arrays["portfolio"][-1], list(published.values()),
                               atol=0.05)
    assert drawn["rolling_loss"]["lines"] == 3 + 2
    # the recorded events are the run's labelled events, scored the same way
    labels = trace.arrays["labels"].astype(np.int64)
    assert len(labels) == stream["labels"]
    served = classification_losses(trace.arrays["served"], labels)
    adapted = stream["scores"]["adapted"]
    assert served["log_loss"].mean() == pytest.approx(adapted["log_loss"], abs=1e-9)
    assert drawn["reliability"]["ece_after"] == pytest.approx(adapted["ece"], abs=1e-9)
    before = classification_losses(trace.arrays["before"], labels)
    assert drawn["reliability"]["ece_before"] == pytest.approx(
        expected_calibration_error(before["confidence"], before["correct"]))
    assert drawn["class_mix"]["prior_shift"] is False
    # the final weights sample is the published final weights
    final = stream["weights"]["ensemble"]
    np.testing.assert_allclose(trace.arrays["weights"][-1], list(final.values()), atol=0.05)
    # pending and throughput: one sample per 256 records, plus the last
    records = load_trace(report_dir).meta["records"]
    assert drawn["pending_throughput"]["samples"] == math.ceil(records / 256)
    assert drawn["pending_throughput"]["max_pending"] > 0
    # conformal (demo.yaml turns it on): one coverage line per level, and the plotted
    # long-run coverage is the run's
    assert drawn["coverage"]["lines"] == 2 and drawn["coverage"]["window"] == 500
    for level, value in zip(("0.1", "0.05"), drawn["coverage"]["coverage"], strict=True):
        assert value == pytest.approx(stream["coverage"]["adapted"][level]["coverage"],
                                      abs=1e-12)
        assert abs(value - (1 - float(level))) < 0.015
    assert drawn["estimate"]["lines"] == 2


def test_prior_shift_chain_draws_its_estimate(tmp_path):
    """Scenario: a FixedShare → PriorShift chain on the prior-shift stream, recorded.
    We expect: the class-mix plot draws the true share, the served mean and the PriorShift
    estimate (one line each for class 1), and the page has no "no PriorShift" note."""
    (stream,) = suite_streams(["agrawal-prior-shift"], events=1_500, train_window=500)
    episode = build_episode(stream.make_examples(0), task="classification", train_window=500,
                            events=1_500, seed=0, name="prior")
    contender = PipelineContender("prior", "ours", "", adapters=[
        {"type": "FixedShare"}, {"type": "PriorShift", "source_prior": [0.5, 0.5]}])
    pipeline = contender.pipeline(episode)
    recorder = TraceRecorder(pipeline)
    contender.run(episode, recorder.process)
    recorder.save(tmp_path, meta={"source": "test"})
    page, plots = build_report(tmp_path)
    drawn = {plot.key: plot.drawn for plot in plots["prior"]}
    assert drawn["class_mix"] == {"lines": 3, "prior_shift": True, "drift_markers": 0,
                                  "change_markers": 0}
    assert drawn["reliability"]["panels"] == 2
    assert "no PriorShift stage" not in page.read_text()


def test_regression_trace_says_what_does_not_apply(tmp_path):
    (stream,) = suite_streams(["friedman-abrupt"], events=600, train_window=200)
    episode = build_episode(stream.make_examples(0), task="regression", train_window=200,
                            events=600, seed=0, name="friedman")
    contender = PipelineContender("fs", "ours", "", adapters=[{"type": "FixedShare"}])
    pipeline = contender.pipeline(episode)
    recorder = TraceRecorder(pipeline, sample_every_records=64)
    contender.run(episode, recorder.process)
    recorder.save(tmp_path)
    page, plots = build_report(tmp_path)
    by_key = {plot.key: plot for plot in plots["friedman"]}
    assert by_key["reliability"].drawn == {"empty": True}
    assert by_key["class_mix"].drawn == {"empty": True}
    assert by_key["coverage"].drawn == {"empty": True}
    assert by_key["estimate"].drawn == {"empty": True}
    assert by_key["rolling_loss"].drawn["lines"] == 3 + 1
    text = page.read_text()
    assert "no probabilities to calibrate" in text and "there is no class mix" in text


def test_report_verb_on_a_folder_without_a_trace(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "no trace.json" in capsys.readouterr().err


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Debian Chromium for this module's pages (a fresh profile)."""
    with Chromium(tmp_path_factory.mktemp("chromium-profile")) as chromium:
        yield chromium


#: Each figure of a page: its id, whether its image decoded and at what size, and where
#: it was laid out (page coordinates, CSS pixels).
FIGURES_JS = """[...document.querySelectorAll('figure')].map(figure => {
  const image = figure.querySelector('img');
  const box = image ? image.getBoundingClientRect() : null;
  return {id: figure.id, loaded: !!image && image.complete,
          natural: image ? [image.naturalWidth, image.naturalHeight] : [0, 0],
          box: box ? [box.left + scrollX, box.top + scrollY, box.width, box.height] : null};
})"""


def test_page_renders_in_headless_chromium(service_run, browser, tmp_path):
    """Scenario: the report page of a service run opened in headless Chromium (Debian's),
    1100 CSS pixels wide, then a screenshot of the whole page.
    We expect: no console error, uncaught exception or browser log error; one figure per
    plot, in order, each image decoded at its PNG's size and laid out visibly; and in the
    screenshot each plot's area holds a drawing (many colours), not a blank box."""
    report_dir, _ = service_run
    session = browser.open((report_dir / "report.html").as_uri(), width=1100, height=900)
    figures = browser.evaluate(session, FIGURES_JS)
    assert [figure["id"] for figure in figures] == PLOT_KEYS
    for figure in figures:
        png = (report_dir / "plots" / f"0-{figure['id']}.png").read_bytes()
        assert figure["loaded"] and tuple(figure["natural"]) == _png_size(png), figure
        assert figure["box"][2] > 300 and figure["box"][3] > 100, figure

    page = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": page["width"], "height": page["height"], "scale": 1}
    shot = base64.b64decode(browser.send("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": clip}, session=session)["data"])
    (tmp_path / "report.png").write_bytes(shot)   # kept with the test's tmp_path to look at
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.size == (round(page["width"]), round(page["height"]))
    assert len(image.getcolors(1 << 24)) > 100, "the screenshot is (nearly) one colour"
    for figure in figures:
        left, top, width, height = figure["box"]
        area = image.crop((round(left), round(top), round(left + width), round(top + height)))
        assert len(area.getcolors(1 << 24)) > 20, f"plot {figure['id']} shows no drawing"
    assert browser.errors(session) == []


def test_the_browser_check_sees_console_errors_and_broken_images(browser):
    """Scenario: a page with a console error, an uncaught exception, a blocked image and
    an image whose data does not decode, opened like the report.
    We expect: all three errors reported and both images at natural size 0, so the report
    test above would fail on such a page."""
    page = ("data:text/html,<figure id=a><img src='data:image/png;base64,AAAA'></figure>"
            "<figure id=b><img src='file:///nonexistent.png'></figure>"
            "<script>console.error('boom'); no_such_function()</script>")
    session = browser.open(page, width=800, height=600)
    errors = browser.errors(session)
    assert any(error == "console: boom" for error in errors), errors
    assert any("no_such_function is not defined" in error for error in errors), errors
    assert any("nonexistent.png" in error for error in errors), errors
    assert [figure["natural"] for figure in browser.evaluate(session, FIGURES_JS)] == [
        [0, 0], [0, 0]]
