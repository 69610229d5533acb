"""The dataset browser: images of a dataset split with their labels, in ipywidgets (static figure for papermill).

``browser(annotations, split, interactive=True)`` returns a widget to display
in JupyterLab; with ``interactive=False`` (headless runs) it returns a figure
showing the same content for a fixed set of images.
"""

from __future__ import annotations

import io

import numpy as np

from parlab.data.annotations import Annotations
from parlab.data.images import load_rgb


def _attribute_html(annotations: Annotations, row: int) -> str:
    items = []
    for name, v in zip(annotations.attributes, annotations.labels[row]):
        colour, mark = ("#2e7d32", "&#10003;") if v == 1 else ("#9e9e9e", "&middot;") if v == 0 else ("#ef6c00", "?")
        items.append(f"<span style='color:{colour};font-family:monospace'>{mark} {name}</span>")
    return "<br>".join(items)


def browser(annotations: Annotations, split: str = "train", interactive: bool = True, n_static: int = 8,
            seed: int = 0, zoom: int = 3):
    """Browse images of ``split`` with their attributes.

    Interactive: a slider over images, a filter keeping only images positive
    for one attribute, the image enlarged ``zoom`` times and its labels.
    """
    rows_all = annotations.split(split)
    if not interactive:
        from parlab.plots import image_grid

        pick = np.sort(np.random.default_rng(seed).choice(rows_all, min(n_static, len(rows_all)), replace=False))
        return image_grid(annotations, pick, columns=min(8, len(pick)), max_attributes=12)

    import ipywidgets as w

    attribute = w.Dropdown(options=["(all images)"] + list(annotations.attributes), description="positive for")
    index = w.IntSlider(min=0, max=len(rows_all) - 1, description="image", continuous_update=False)
    image = w.Image(format="png")
    labels = w.HTML()
    status = w.Label()
    state = {"rows": rows_all}

    def show(*_):
        rows = state["rows"]
        if not len(rows):
            status.value, labels.value, image.value = "no image in this split is positive for it", "", b""
            return
        row = int(rows[min(index.value, len(rows) - 1)])
        img = load_rgb(annotations.image_path(row))
        img = img.resize((img.width * zoom, img.height * zoom))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        image.value = buf.getvalue()
        labels.value = _attribute_html(annotations, row)
        status.value = f"{annotations.image_names[row]} (row {row}), {len(rows)} images"

    def refilter(*_):
        j = attribute.index - 1
        rows = rows_all if j < 0 else rows_all[annotations.labels[rows_all, j] == 1]
        state["rows"] = rows
        index.max = max(len(rows) - 1, 0)
        index.value = 0
        show()

    attribute.observe(refilter, names="value")
    index.observe(show, names="value")
    show()
    return w.VBox([w.HBox([attribute, index]), status, w.HBox([image, labels])])
