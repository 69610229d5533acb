"""The prediction explorer: trained models' predictions in ipywidgets, with a static page for papermill.

``prediction_explorer(models, annotations)`` shows, for a chosen split and
method, one image at a time with every attribute's ground truth, probability
and decision (green: right, red: wrong, grey: ignored label), the split's
metrics at a threshold slider's value (recomputed as the slider moves), and,
when an attribute is clicked, that attribute's Grad-CAM on the image. As in
FiftyOne's evaluation view, the images browsed are one attribute's true/false
positives/negatives at the threshold (:func:`~.selection.select_rows`), in
split order, by probability, or most wrong first; a button draws the gallery
of that attribute's worst mistakes with their CAMs (:func:`mistakes_gallery`,
a matplotlib Figure for notebooks and papermill too).

With ``interactive=False`` (headless runs) it returns the same content as one
HTML page for the first images of the split: metrics at the threshold, and
per image its attributes and the CAM of its most confident mistake.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from parlab.data.images import PARImageDataset, load_rgb
from parlab.inference import LoadedModel
from parlab.metrics import pedestrian_metrics
from parlab.training.distributed import DistContext
from parlab.training.evaluation import Predictions, eval_loader, predict_dataset
from parlab.visualisation.cams import attribute_cams
from parlab.visualisation.figures import cam_gallery
from parlab.visualisation.overlays import overlay
from parlab.visualisation.selection import KINDS, ORDERS, attribute_index, model_inputs, select_rows

METRICS = (("ma", "mA"), ("acc", "Acc"), ("prec", "Prec"), ("rec", "Rec"), ("f1", "F1"))
RIGHT, WRONG, IGNORED = "#2e7d32", "#c62828", "#9e9e9e"
MISTAKES = ("mistakes", "false positive", "false negative")  # the kinds a gallery of mistakes shows
OUTCOMES = {(1, True): "TP", (0, True): "FP", (1, False): "FN", (0, False): "TN"}  # (label, predicted present)


def split_predictions(loaded: LoadedModel, annotations, split: str, batch_size: int = 128) -> Predictions:
    """``loaded``'s logits on every image of ``split``; ``.rows`` are their annotation rows."""
    data = PARImageDataset(annotations, split, loaded.transform)
    ctx = DistContext(0, 1, 0, loaded.device)
    return predict_dataset(loaded.model, eval_loader(data, batch_size, 0, ctx), ctx, loaded.run.amp)


class _Cache:
    """Probabilities per (method, split), computed when first asked for."""

    def __init__(self, models: dict[str, LoadedModel], annotations, batch_size: int) -> None:
        self.models, self.annotations, self.batch_size, self.done = models, annotations, batch_size, {}

    def __call__(self, method: str, split: str) -> Predictions:
        if (method, split) not in self.done:
            self.done[(method, split)] = split_predictions(self.models[method], self.annotations, split,
                                                           self.batch_size)
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


def _png(image: Image.Image, zoom: int = 1) -> bytes:
    """``image`` enlarged ``zoom`` times (each pixel a block) as PNG bytes."""
    buffer = io.BytesIO()
    image.resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def _cam_overlay(loaded: LoadedModel, image, attribute: int, zoom: int) -> bytes:
    x = loaded.transform(image).unsqueeze(0).to(loaded.device)
    cam = attribute_cams(loaded.model, x, [attribute])[0, 0]
    return _png(Image.fromarray(overlay(image, cam, letterboxed=loaded.transform.square)), zoom)


def mistakes_gallery(loaded: LoadedModel, annotations, attribute: str, split: str = "test", n: int = 8,
                     threshold: float | None = None, kind: str = "mistakes", method: str = "gradcam",
                     columns: int = 4, predictions: Predictions | None = None, batch_size: int = 128) -> Figure:
    """The ``n`` worst mistakes of ``loaded`` on ``attribute`` over ``split``, each with its CAM and probability.

    Worst: farthest from the truth (|probability - label|) first, among ``kind`` ("mistakes", "false
    positive" or "false negative"; any kind of :data:`~.selection.KINDS` works, hardest first). Each title
    gives the outcome (FP, FN ...), the probability and the image's name.

    Args:
        threshold: the decision threshold (default: the checkpoint's for this attribute).
        method: a name of :func:`~.cams.cam_methods`.
        predictions: ``loaded``'s predictions on ``split`` when already made (:func:`split_predictions`).

    Returns:
        A matplotlib Figure with one axes per image shown (fewer than ``n`` when fewer are of ``kind``).
    """
    j = attribute_index(attribute, annotations.attributes)
    preds = split_predictions(loaded, annotations, split, batch_size) if predictions is None else predictions
    labels = annotations.labels[preds.rows]
    thr = float(loaded.thresholds[j]) if threshold is None else threshold
    chosen = select_rows(labels, preds.probs, j, kind, thr, "most wrong first")[:n]
    rows = preds.rows[chosen]
    images, cams = [], []
    if len(rows):  # no batch to make of no images
        images, x = model_inputs(annotations, rows, loaded.transform)
        cams = attribute_cams(loaded.model, x.to(loaded.device), [j], method)[:, 0]
    titles = [f"{OUTCOMES[int(labels[i, j]), bool(preds.probs[i, j] > thr)]} p={preds.probs[i, j]:.2f}\n"
              f"{Path(annotations.image_names[row]).stem}" for i, row in zip(chosen, rows)]
    title = (f"{attribute}: the {len(rows)} most wrong ({kind}) of {loaded.method_name} on {split} "
             f"(threshold {thr:.2f}, {method})")
    return cam_gallery(images, cams, titles, title, columns, loaded.transform.square)


def prediction_explorer(models: dict[str, LoadedModel], annotations, split: str = "test", interactive: bool = True,
                        threshold: float = 0.5, zoom: int = 3, n_static: int = 6, batch_size: int = 128):
    """Browse predictions of ``models`` (name -> :func:`parlab.inference.load_model` result) on ``annotations``.

    Interactive: dropdowns for the split and the method, for the attribute, kind (all, true/false
    positives/negatives, mistakes) and order of the images browsed, an image slider, a threshold slider
    that updates the metrics, colours and kinds, one button per attribute showing its CAM, and a button
    drawing the attribute's worst mistakes (:func:`mistakes_gallery`; the kind's when it is false positives
    or false negatives). Static: an ``IPython.display.HTML`` page of the images and CAMs for the first
    ``n_static`` images.
    """
    if not models:
        raise ValueError("prediction_explorer needs at least one model (name -> LoadedModel)")
    cache = _Cache(models, annotations, batch_size)
    names = list(annotations.attributes)
    if not interactive:
        return _static_page(models, cache, annotations, split, threshold, zoom, n_static)

    c = _controls(models, annotations, split, threshold)
    state = {}

    def refilter(*_):
        """The images browsed: the attribute's ``kind`` at the threshold, in ``order``."""
        preds = cache(c.method.value, c.split_choice.value)
        state["positions"] = select_rows(annotations.labels[preds.rows], preds.probs,
                                         names.index(c.attribute.value), c.kind.value, c.thr.value, c.order.value)
        c.index.max = max(len(state["positions"]) - 1, 0)
        show()

    def restart(*_):
        c.index.value = 0  # a new selection starts at its first (e.g. worst) image
        refilter()

    def refresh_metrics(*_):
        preds = cache(c.method.value, c.split_choice.value)
        c.metrics.value = metrics_html(annotations.labels[preds.rows], preds.probs, c.thr.value, names)
        refilter()

    def show(*_):
        preds, positions = cache(c.method.value, c.split_choice.value), state["positions"]
        if not len(positions):
            c.image.value, c.labels_html.value = b"", ""
            state.pop("image", None)  # a CAM button has no image to draw on
            c.status.value = f"no {c.kind.value} for {c.attribute.value} at threshold {c.thr.value:.2f}"
            return
        i = min(c.index.value, len(positions) - 1)
        row = int(preds.rows[positions[i]])
        img = load_rgb(annotations.image_path(row))
        state["image"] = img
        c.image.value = _png(img, zoom)
        labels, probs = annotations.labels[row], preds.probs[positions[i]]
        c.labels_html.value = attributes_html(names, labels, probs, c.thr.value)
        for button, label, prob in zip(c.buttons, labels, probs):
            button.style.button_color = {RIGHT: "#c8e6c9", WRONG: "#ffcdd2", IGNORED: "#eeeeee"}[
                _colour(int(label), float(prob), c.thr.value)]
        c.status.value = (f"{annotations.image_names[row]} (row {row}), image {i + 1} of {len(positions)} "
                          f"({c.kind.value} for {c.attribute.value}, {c.order.value})")

    def show_cam(button):
        if "image" in state:
            j = names.index(button.description)
            c.cam.value = _cam_overlay(models[c.method.value], state["image"], j, zoom)
            c.cam_title.value = f"Grad-CAM of {button.description} ({c.method.value})"

    def show_gallery(_):
        kind = c.kind.value if c.kind.value in MISTAKES else "mistakes"
        fig = mistakes_gallery(models[c.method.value], annotations, c.attribute.value, c.split_choice.value,
                               c.gallery_size.value, c.thr.value, kind,
                               predictions=cache(c.method.value, c.split_choice.value))
        c.gallery.value = _figure_png(fig)

    _wire(c, refresh_metrics, restart, show, show_cam, show_gallery)
    refresh_metrics()
    return _page(c)


def _wire(c: SimpleNamespace, refresh_metrics, restart, show, show_cam, show_gallery) -> None:
    """Connect the widgets of :func:`_controls` to the explorer's handlers: a new method, split or threshold
    rescores; a new attribute, kind or order restarts the browsing; the image slider shows; buttons draw."""
    for button in c.buttons:
        button.on_click(show_cam)
    c.gallery_button.on_click(show_gallery)
    for control in (c.method, c.split_choice, c.thr):
        control.observe(refresh_metrics, names="value")
    for control in (c.attribute, c.kind, c.order):
        control.observe(restart, names="value")
    c.index.observe(show, names="value")


def _controls(models: dict[str, LoadedModel], annotations, split: str, threshold: float) -> SimpleNamespace:
    """The explorer's widgets, unwired: choices, sliders, outputs and buttons."""
    import ipywidgets as w

    names = list(annotations.attributes)
    splits = [s for s in ("train", "val", "test", "trainval") if s in annotations.splits()]
    narrow = w.Layout(width="240px")
    method = w.Dropdown(options=list(models), description="method", layout=narrow)
    split_choice = w.Dropdown(options=splits, value=split if split in splits else splits[-1], description="split",
                              layout=narrow)
    attribute = w.Dropdown(options=names, description="attribute", layout=narrow)
    kind = w.Dropdown(options=list(KINDS), value="all", description="show", layout=narrow)
    order = w.Dropdown(options=list(ORDERS), value="split order", description="order", layout=narrow)
    index = w.IntSlider(min=0, max=0, description="image", continuous_update=False)
    thr = w.FloatSlider(value=threshold, min=0.05, max=0.95, step=0.05, description="threshold",
                        continuous_update=True, readout_format=".2f")
    metrics, labels_html, status = w.HTML(), w.HTML(), w.Label()
    image, cam, gallery = w.Image(format="png"), w.Image(format="png"), w.Image(format="png")
    cam_title = w.Label("click an attribute for its CAM")
    buttons = [w.Button(description=n, layout=w.Layout(width="150px")) for n in names]
    gallery_button = w.Button(description="worst mistakes", layout=w.Layout(width="150px"))
    gallery_size = w.BoundedIntText(value=8, min=1, max=64, description="how many")
    return SimpleNamespace(method=method, split_choice=split_choice, attribute=attribute, kind=kind, order=order,
                           index=index, thr=thr, metrics=metrics, labels_html=labels_html, status=status, image=image,
                           cam=cam, gallery=gallery, cam_title=cam_title, buttons=buttons,
                           gallery_button=gallery_button, gallery_size=gallery_size)


def _page(c: SimpleNamespace):
    """The explorer's widgets laid out: choices, sliders, metrics, the image with its labels and CAM, the
    attribute buttons and the gallery."""
    import ipywidgets as w

    grid = w.GridBox(c.buttons, layout=w.Layout(grid_template_columns="repeat(4, 155px)"))
    page = w.VBox([w.HBox([c.method, c.split_choice, c.attribute, c.kind, c.order]), w.HBox([c.index, c.thr]),
                   c.metrics, c.status, w.HBox([c.image, c.labels_html, w.VBox([c.cam_title, c.cam])]), grid,
                   w.VBox([w.HBox([c.gallery_button, c.gallery_size]), c.gallery])])
    page.add_class("parlab-explorer")
    return page


def _figure_png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes; the figure is closed (pyplot keeps every open one)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


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
            picture = base64.b64encode(_png(img, zoom)).decode()
            cells.append(
                "<td style='vertical-align:top;padding:4px'>"
                f"<img src='data:image/png;base64,{picture}'>"
                f"<img src='data:image/png;base64,{base64.b64encode(cam).decode()}'>"
                f"<br><small>CAM: {names[j]}{' (most confident mistake)' if wrong else ''}</small><br>"
                f"<small>{attributes_html(names, labels, probs, threshold)}</small></td>")
        parts.append("<table><tr>" + "".join(cells) + "</tr></table>")
    return HTML("\n".join(parts))
