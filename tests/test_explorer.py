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
import pytest
import torch

from parlab.data import load_dataset
from parlab.inference import load_model
from parlab.metrics import pedestrian_metrics
from parlab.models import build_model
from parlab.training.checkpoint import save_atomic
from parlab.training.config import BaselineConfig, split_config
from parlab.training.engine import model_checkpoint
from parlab.training.task import SupervisedTask
from parlab.visualisation import model_inputs
from parlab.visualisation.prediction_explorer import METRICS, prediction_explorer

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
