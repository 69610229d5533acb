"""The prediction explorer: live metrics at the threshold, CAM on click, static page, and a real browser."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

import parlab
from parlab.data import load_dataset
from parlab.data.images import load_rgb
from parlab.inference import load_model
from parlab.metrics import pedestrian_metrics
from parlab.models import build_model
from parlab.training.checkpoint import save_atomic
from parlab.training.config import BaselineConfig, split_config
from parlab.training.engine import model_checkpoint
from parlab.training.task import SupervisedTask
from parlab.visualisation import model_inputs, select_rows
from parlab.visualisation.prediction_explorer import METRICS, mistakes_gallery, prediction_explorer

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def checkpoint(synthpa_root, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    ann = load_dataset("synthpa", synthpa_root)
    configs = split_config(BaselineConfig, root=str(synthpa_root), backbone="test_resnet", image_size=(64, 32))
    model = build_model("test_resnet", ann.num_attributes, image_size=(64, 32)).eval()
    path = tmp_path_factory.mktemp("explorer") / "best.pt"
    save_atomic(model_checkpoint(SupervisedTask(*configs), model, ann.attributes, 1, {}, "test"), path)
    return path


def _metric_values(html: str) -> list[float]:
    return [float(html.split(f"<b>{name}</b> ")[1].split()[0].replace("</span>", "")) for _, name in METRICS]


def test_threshold_slider_recomputes_the_metrics_and_buttons_show_cams(synthpa_root, checkpoint):
    ann = load_dataset("synthpa", synthpa_root)
    loaded = load_model(checkpoint)
    page = prediction_explorer({"random": loaded}, ann, "test")
    metrics, threshold = page.children[2], page.children[1].children[1]
    before = metrics.value
    threshold.value = 0.3
    assert metrics.value != before and "threshold 0.30" in metrics.value
    rows = ann.split("test")
    with torch.no_grad():
        probs = torch.sigmoid(loaded.model(model_inputs(ann, rows, loaded.transform)[1])).numpy()
    expected = pedestrian_metrics(ann.labels[rows], probs, threshold=0.3).summary()
    assert _metric_values(metrics.value) == pytest.approx([expected[k] for k, _ in METRICS], abs=0.006)
    buttons = page.children[5].children
    assert [b.description for b in buttons] == list(ann.attributes)
    buttons[3].click()
    title, cam = page.children[4].children[2].children
    assert title.value.startswith(f"Grad-CAM of {ann.attributes[3]}") and cam.value[:4] == b"\x89PNG"


# Two attributes' labels and probabilities over six images: column 0 holds every outcome at 0.5
# (rows 0-1 true positives, 2 a false negative, 3 a false positive, 4 a true negative, 5 ignored).
LABELS = np.array([[1, 0], [1, 0], [1, 1], [0, 1], [0, 0], [-1, 1]])
PROBS = np.array([[0.9, 0.1], [0.6, 0.2], [0.3, 0.9], [0.8, 0.7], [0.2, 0.6], [0.99, 0.4]])


@pytest.mark.parametrize("kind, order, expected", [
    ("true positive", "split order", [0, 1]),
    ("true positive", "lowest probability first", [1, 0]),
    ("false positive", "split order", [3]),
    ("false negative", "split order", [2]),
    ("true negative", "split order", [4]),
    ("mistakes", "most wrong first", [3, 2]),  # |0.8 - 0| > |0.3 - 1|
    ("all", "split order", [0, 1, 2, 3, 4]),  # the ignored label of image 5 is never selected
    ("all", "highest probability first", [0, 3, 1, 2, 4]),
    ("all", "most wrong first", [3, 2, 1, 4, 0]),
])
def test_select_rows_picks_one_outcome_of_one_attribute_in_order(kind, order, expected):
    assert select_rows(LABELS, PROBS, 0, kind, 0.5, order).tolist() == expected


def test_select_rows_decides_above_the_threshold_per_attribute_column():
    assert select_rows(LABELS, PROBS, 1, "false positive", 0.5).tolist() == [4]
    assert select_rows(LABELS, PROBS, 1, "false negative", 0.5).tolist() == [5]
    assert select_rows(LABELS, PROBS, 1, "mistakes", 0.5, "most wrong first").tolist() == [4, 5]  # a tie: as listed
    assert select_rows(LABELS, PROBS, 1, "mistakes", 0.65).tolist() == [5]  # 0.6 is no longer a false positive
    assert select_rows(LABELS, PROBS, 0, "false positive", 0.8).tolist() == []  # 0.8 is not above 0.8
    with pytest.raises(ValueError, match="unknown kind 'wrong'; known: all, true positive"):
        select_rows(LABELS, PROBS, 0, "wrong")
    with pytest.raises(ValueError, match="unknown order 'worst'; known: split order"):
        select_rows(LABELS, PROBS, 0, order="worst")


def _test_probs(ann, loaded) -> tuple[np.ndarray, np.ndarray]:
    """(test rows, (N, A) probabilities) as parlab.predict gives them (images decoded as the explorer does)."""
    rows = ann.split("test")
    table = parlab.predict(loaded, [ann.image_path(int(r)) for r in rows])
    return rows, table[[f"prob.{a}" for a in ann.attributes]].to_numpy()


def test_the_gallery_shows_the_worst_mistakes_with_their_probabilities(synthpa_root, checkpoint):
    ann = load_dataset("synthpa", synthpa_root)
    loaded = load_model(checkpoint)
    rows, probs = _test_probs(ann, loaded)
    labels = ann.labels[rows]
    j = int(np.argmax([(labels[:, a] >= 0).sum() for a in range(ann.num_attributes)]))  # any attribute with labels
    wrong = [(abs(probs[i, j] - labels[i, j]), i) for i in range(len(rows))
             if labels[i, j] >= 0 and (probs[i, j] > 0.5) != (labels[i, j] == 1)]
    worst = [i for _, i in sorted(wrong, reverse=True)[:3]]
    assert len(worst) == 3  # an untrained model makes mistakes enough
    fig = mistakes_gallery(loaded, ann, ann.attributes[j], "test", n=3, threshold=0.5)
    assert len(fig.axes) == 3
    for ax, i in zip(fig.axes, worst):
        outcome = "FP" if labels[i, j] == 0 else "FN"
        assert ax.get_title().startswith(f"{outcome} p={probs[i, j]:.2f}\n")
        assert ax.get_images()[0].get_array().shape[:2] == load_rgb(ann.image_path(int(rows[i]))).size[::-1]
    assert fig._suptitle.get_text().startswith(f"{ann.attributes[j]}: the 3 most wrong (mistakes) of baseline")


def test_the_kind_and_order_choose_the_images_browsed(synthpa_root, checkpoint):
    ann = load_dataset("synthpa", synthpa_root)
    loaded = load_model(checkpoint)
    rows, probs = _test_probs(ann, loaded)
    labels = ann.labels[rows]
    page = prediction_explorer({"random": loaded}, ann, "test")
    _, _, attribute, kind, order = page.children[0].children
    index, threshold = page.children[1].children
    status = page.children[3]
    assert index.max == (labels[:, 0] >= 0).sum() - 1  # "all" in split order: every known label of the attribute
    j = int(np.argmax([((labels[:, a] == 0) & (probs[:, a] > 0.5)).sum() for a in range(ann.num_attributes)]))
    attribute.value, kind.value, order.value = ann.attributes[j], "false positive", "highest probability first"
    expected = sorted((i for i in range(len(rows)) if labels[i, j] == 0 and probs[i, j] > 0.5),
                      key=lambda i: -probs[i, j])
    assert len(expected) >= 2 and index.max == len(expected) - 1
    for k in (0, 1):
        index.value = k
        assert status.value.startswith(f"{ann.image_names[rows[expected[k]]]} (row {rows[expected[k]]}), "
                                       f"image {k + 1} of {len(expected)}")
    assert probs.max() < 0.95  # an untrained model is never that sure: no false positive above 0.95
    threshold.value = 0.95
    assert index.max == 0 and status.value == f"no false positive for {ann.attributes[j]} at threshold 0.95"
    gallery_button, gallery = page.children[6].children[0].children[0], page.children[6].children[1]
    threshold.value = 0.5
    gallery_button.click()
    assert gallery.value[:4] == b"\x89PNG"


def test_static_page_shows_metrics_and_one_cam_per_image(synthpa_root, checkpoint):
    ann = load_dataset("synthpa", synthpa_root)
    page = prediction_explorer({"random": load_model(checkpoint)}, ann, "test", interactive=False, n_static=3)
    assert page.data.count("parlab-metrics") == 1 and page.data.count("CAM: ") == 3
    assert page.data.count("data:image/png;base64") == 6  # each image and its CAM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_explorer_renders_and_reacts_in_jupyterlab_in_chromium(synthpa_root, checkpoint, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (Debian package chromium; .ci/run installs it where it can)")
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(
        "from parlab.data import load_dataset\nfrom parlab.inference import load_model\n"
        "from parlab.visualisation.prediction_explorer import prediction_explorer\n"
        f"ann = load_dataset('synthpa', {str(synthpa_root)!r})\n"
        f"prediction_explorer({{'random': load_model({str(checkpoint)!r})}}, ann, 'test')")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "explorer.ipynb")
    port, token = _free_port(), "parlab-test-token"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "jupyter.log", "w"), env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/explorer.ipynb?token={token}")
            page.locator(".jp-Notebook").wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            for dialog in page.locator(".jp-Dialog").all():  # e.g. an announcement; never the test's subject
                page.screenshot(path=str(tmp_path / "dialog.png"))
                dialog.locator(".jp-Dialog-button.jp-mod-accept, .jp-Dialog-button").last.click()
            page.locator(".jp-Notebook .jp-Cell").first.click()
            page.keyboard.press("Shift+Enter")
            explorer = page.locator(".parlab-explorer")
            explorer.wait_for(timeout=120_000)
            metrics = page.locator(".parlab-metrics")
            before = metrics.inner_text()
            assert "threshold 0.50" in before
            handle = explorer.locator(".noUi-handle").nth(1)  # the threshold slider (the first is the image)
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function("() => !document.querySelector('.parlab-metrics').innerText.includes('0.50')",
                                   timeout=30_000)
            after = metrics.inner_text()
            assert "threshold 0.55" in after and after != before
            explorer.get_by_role("button", name="Hat", exact=True).click()
            page.get_by_text("Grad-CAM of Hat").wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
            browser.close()
        assert (tmp_path / "explorer.png").stat().st_size > 10_000
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp_path / "rt", ignore_errors=True)
