"""The prediction explorer: trained models' predictions in ipywidgets, with a static page for papermill.

``prediction_explorer(models, annotations)`` shows, for a chosen split and
method, one image at a time with every attribute's ground truth, probability
and decision (green: right, red: wrong, grey: ignored label), the split's
metrics at a threshold slider's value (recomputed as the slider moves), and,
when an attribute is clicked, that attribute's Grad-CAM on the image.

With ``interactive=False`` (headless runs) it returns the same content as one
HTML page for the first images of the split: metrics at the threshold, and
per image its attributes and the CAM of its most confident mistake.
"""

from __future__ import annotations

import base64
import io

import numpy as np

from parlab.data.images import PARImageDataset, load_rgb
from parlab.inference import LoadedModel
from parlab.metrics import pedestrian_metrics
from parlab.training.distributed import DistContext
from parlab.training.evaluation import Predictions, eval_loader, predict_dataset
from parlab.visualisation.cams import attribute_cams
from parlab.visualisation.overlays import overlay

METRICS = (("ma", "mA"), ("acc", "Acc"), ("prec", "Prec"), ("rec", "Rec"), ("f1", "F1"))
RIGHT, WRONG, IGNORED = "#2e7d32", "#c62828", "#9e9e9e"


class _Cache:
    """Probabilities per (method, split), computed when first asked for."""

    def __init__(self, models: dict[str, LoadedModel], annotations, batch_size: int) -> None:
        self.models, self.annotations, self.batch_size, self.done = models, annotations, batch_size, {}

    def __call__(self, method: str, split: str) -> Predictions:
        if (method, split) not in self.done:
            loaded = self.models[method]
            data = PARImageDataset(self.annotations, split, loaded.transform)
            ctx = DistContext(0, 1, 0, loaded.device)
            self.done[(method, split)] = predict_dataset(loaded.model, eval_loader(data, self.batch_size, 0, ctx), ctx,
                                                         loaded.run.amp)
        return self.done[(method, split)]


def metrics_html(labels: np.ndarray, probs: np.ndarray, threshold: float, attributes) -> str:
    """The split's mA/Acc/Prec/Rec/F1 (percent) at ``threshold``, as one HTML line."""
    summary = pedestrian_metrics(labels, probs, threshold=threshold, attributes=attributes).summary()
    cells = "  ".join(f"<b>{name}</b> {summary[key]:.2f}" for key, name in METRICS)
    return f"<span class='parlab-metrics'>threshold {threshold:.2f}: {cells}</span>"


def _colour(label: int, prob: float, threshold: float) -> str:
    if label < 0:
        return IGNORED
    return RIGHT if (prob > threshold) == bool(label) else WRONG


def attributes_html(names, labels: np.ndarray, probs: np.ndarray, threshold: float) -> str:
    """One line per attribute: ground truth, probability, decision coloured by correctness."""
    lines = []
    for name, label, prob in zip(names, labels, probs):
        truth = {1: "present", 0: "absent"}.get(int(label), "ignored")
        lines.append(f"<span style='color:{_colour(int(label), float(prob), threshold)};font-family:monospace;"
                     "white-space:pre'>"
                     f"{name:<20} {truth:<8} p={prob:.2f}</span>")
    return "<br>".join(lines)


def _png(array_or_image) -> bytes:
    from PIL import Image

    image = array_or_image if isinstance(array_or_image, Image.Image) else \
        Image.fromarray((255 * np.clip(array_or_image, 0, 1)).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _cam_overlay(loaded: LoadedModel, image, attribute: int, zoom: int) -> bytes:
    x = loaded.transform(image).unsqueeze(0).to(loaded.device)
    cam = attribute_cams(loaded.model, x, [attribute])[0, 0]
    shown = overlay(image, cam)
    return _png(np.kron(shown, np.ones((zoom, zoom, 1))))


def prediction_explorer(models: dict[str, LoadedModel], annotations, split: str = "test", interactive: bool = True,
                        threshold: float = 0.5, zoom: int = 3, n_static: int = 6, batch_size: int = 128):
    """Browse predictions of ``models`` (name -> :func:`parlab.inference.load_model` result) on ``annotations``.

    Interactive: dropdowns for the split and the method, an image slider, a threshold slider that
    updates the metrics and colours, and one button per attribute showing its CAM. Static: an
    ``IPython.display.HTML`` page of the same content for the first ``n_static`` images.
    """
    if not models:
        raise ValueError("prediction_explorer needs at least one model (name -> LoadedModel)")
    cache = _Cache(models, annotations, batch_size)
    names = list(annotations.attributes)
    if not interactive:
        return _static_page(models, cache, annotations, split, threshold, zoom, n_static)

    import ipywidgets as w

    splits = [s for s in ("train", "val", "test", "trainval") if s in annotations.splits()]
    method = w.Dropdown(options=list(models), description="method")
    split_choice = w.Dropdown(options=splits, value=split if split in splits else splits[-1], description="split")
    index = w.IntSlider(min=0, max=0, description="image", continuous_update=False)
    thr = w.FloatSlider(value=threshold, min=0.05, max=0.95, step=0.05, description="threshold",
                        continuous_update=True, readout_format=".2f")
    metrics, labels_html, status = w.HTML(), w.HTML(), w.Label()
    image, cam = w.Image(format="png"), w.Image(format="png")
    cam_title = w.Label("click an attribute for its CAM")
    buttons = [w.Button(description=n, layout=w.Layout(width="150px")) for n in names]
    state = {}

    def current():
        preds = cache(method.value, split_choice.value)
        i = min(index.value, len(preds.rows) - 1)
        return preds, i, int(preds.rows[i])

    def refresh_metrics(*_):
        preds = cache(method.value, split_choice.value)
        metrics.value = metrics_html(annotations.labels[preds.rows], preds.probs, thr.value, names)
        show()

    def show(*_):
        preds, i, row = current()
        img = load_rgb(annotations.image_path(row))
        state["image"] = img
        image.value = _png(img.resize((img.width * zoom, img.height * zoom)))
        labels, probs = annotations.labels[row], preds.probs[i]
        labels_html.value = attributes_html(names, labels, probs, thr.value)
        for button, label, prob in zip(buttons, labels, probs):
            button.style.button_color = {RIGHT: "#c8e6c9", WRONG: "#ffcdd2", IGNORED: "#eeeeee"}[
                _colour(int(label), float(prob), thr.value)]
        status.value = f"{annotations.image_names[row]} (row {row}), image {i + 1} of {len(preds.rows)}"

    def new_source(*_):
        preds = cache(method.value, split_choice.value)
        index.max = len(preds.rows) - 1
        index.value = min(index.value, index.max)
        refresh_metrics()

    def show_cam(button):
        j = names.index(button.description)
        cam.value = _cam_overlay(models[method.value], state["image"], j, zoom)
        cam_title.value = f"Grad-CAM of {button.description} ({method.value})"

    for button in buttons:
        button.on_click(show_cam)
    method.observe(new_source, names="value")
    split_choice.observe(new_source, names="value")
    index.observe(show, names="value")
    thr.observe(refresh_metrics, names="value")
    new_source()
    grid = w.GridBox(buttons, layout=w.Layout(grid_template_columns="repeat(4, 155px)"))
    page = w.VBox([w.HBox([method, split_choice]), w.HBox([index, thr]), metrics, status,
                   w.HBox([image, labels_html, w.VBox([cam_title, cam])]), grid])
    page.add_class("parlab-explorer")
    return page


def _static_page(models, cache: _Cache, annotations, split: str, threshold: float, zoom: int, n: int):
    from IPython.display import HTML

    names = list(annotations.attributes)
    parts = []
    for name, loaded in models.items():
        preds = cache(name, split)
        parts.append(f"<h4>{name} on {split}</h4>" +
                     metrics_html(annotations.labels[preds.rows], preds.probs, threshold, names))
        cells = []
        for i in range(min(n, len(preds.rows))):
            row = int(preds.rows[i])
            img = load_rgb(annotations.image_path(row))
            labels, probs = annotations.labels[row], preds.probs[i]
            wrong = [(abs(float(p) - 0.5), j) for j, (label, p) in enumerate(zip(labels, probs))
                     if _colour(int(label), float(p), threshold) == WRONG]
            j = max(wrong)[1] if wrong else int(np.argmax(probs))
            cam = _cam_overlay(loaded, img, j, zoom)
            picture = base64.b64encode(_png(img.resize((img.width * zoom, img.height * zoom)))).decode()
            cells.append(
                "<td style='vertical-align:top;padding:4px'>"
                f"<img src='data:image/png;base64,{picture}'>"
                f"<img src='data:image/png;base64,{base64.b64encode(cam).decode()}'>"
                f"<br><small>CAM: {names[j]}{' (most confident mistake)' if wrong else ''}</small><br>"
                f"<small>{attributes_html(names, labels, probs, threshold)}</small></td>")
        parts.append("<table><tr>" + "".join(cells) + "</tr></table>")
    return HTML("\n".join(parts))
