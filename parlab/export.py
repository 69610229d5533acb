"""Export a trained checkpoint to ONNX or to timm's safetensors layout, checked before it is kept.

``export_onnx(checkpoint, "model.onnx")`` rebuilds the model with
:func:`parlab.inference.load_model` and writes an ONNX graph with one input,
``images`` (B, 3, H, W) float32 normalised with the run's mean and std, and one
output, ``logits`` (B, A); the batch axis B is dynamic. ``sigmoid(logits) >
thresholds`` gives the same labels as :func:`parlab.predict`. Everything a
consumer needs to prepare images and read the outputs travels in the file's
``metadata_props`` (keys ``parlab.*``, values JSON or plain strings): attribute
names, thresholds, the preprocessing (input size, mean, std, geometry, and
``parlab.preprocess``: the recipe in words), method, backbone and parlab's version.

:func:`preprocess` is that recipe as code, read from the metadata alone (onnxruntime's
``session.get_modelmeta().custom_metadata_map``): an image file decoded in full to RGB,
optionally letterboxed to a black square, resized with PIL's antialiased bilinear filter,
scaled to [0, 1] and normalised. It runs parlab's own evaluation transform
(:class:`~parlab.data.images.PARTransform`), so onnxruntime on its output gives what
``parlab predict`` gives on the same file.

Before the file is put in place, onnxruntime runs it on a seeded random batch
of 3 images and on a batch of 1 (a graph that baked in the batch size fails
there) and its logits must agree with PyTorch's to ``atol``; a file that does
not is never written. The write is atomic (:func:`parlab.files.write_atomic`),
so an existing file at ``output`` is either replaced whole or left untouched.

Timm-backbone models (the baseline, FRDL) use PyTorch's TorchScript exporter,
which needs only ``onnx``; PromptPAR uses the ``torch.export`` exporter, which
also needs ``onnxscript``. ``pip install parlab[onnx]`` installs all three and
onnxruntime.

``export_safetensors(checkpoint, folder)`` writes a baseline (a timm backbone with a linear head)
as the timm classifier it is: ``model.safetensors`` and ``config.json`` in the layout of a timm
Hugging Face repository, written by timm's own ``save_for_hf``. The head (with its BatchNorm folded
in, for ``linear_bn``) becomes the architecture's classifier with one output per attribute, so
``timm.create_model("local-dir:FOLDER", pretrained=True)`` (or ``"hf-hub:ORG/NAME"`` once the folder
is uploaded) rebuilds it with no parlab installed; the config's ``pretrained_cfg`` holds the
input size, mean, std and interpolation (timm's own eval transform then equals parlab's),
``label_names`` the attributes, and ``parlab`` the thresholds and the recipe. Heads that are no
linear classifier (FRDL's, PromptPAR) have no timm form and are refused: export them to ONNX.
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from parlab._version import __version__
from parlab.data.images import PARTransform, load_rgb, to_rgb
from parlab.errors import ParlabError
from parlab.files import write_atomic
from parlab.inference import LoadedModel, load_model
from parlab.models import LinearHead, PARModel

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
CHECK_BATCHES = (3, 1)  # 3 random images, then 1: a batch size baked into the graph fails the second
CHECK_SEED = 0
INSTALL_HINT = "pip install parlab[onnx]"
PREFIX = "parlab."  # of every metadata key parlab writes
# The geometry before the resize, as the "parlab.resize" value names it: PARTransform.square.
GEOMETRIES = {"stretch": False, "letterbox": True}
TIMM_FILES = ("model.safetensors", "config.json")  # a timm Hugging Face repository's weights and config


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` / :func:`export_safetensors` wrote and how closely it reproduces PyTorch."""

    output: Path  # the .onnx file, or the folder of model.safetensors and config.json
    max_abs_diff: float  # max |logits of the written file - PyTorch's| over the check batches
    image_size: tuple[int, int]  # (height, width) of the ``images`` input
    num_attributes: int
    opset: int | None  # of an ONNX file (the torch.export exporter may keep a newer one than asked); None otherwise
    checked_with: str = "onnx"  # what reran the written file: "onnx" (onnxruntime) or "timm" (timm's loader)

    def summary(self) -> str:
        """One line, e.g. ``model.onnx: 26 attributes, input 64x32, max |onnx - torch| = 2.4e-06``."""
        h, w = self.image_size
        return (f"{self.output}: {self.num_attributes} attributes, input {h}x{w}, "
                f"max |{self.checked_with} - torch| = {self.max_abs_diff:.1e}")


def export_onnx(checkpoint: str | Path, output: str | Path, opset: int = 17, device: str = "cpu",
                atol: float = 1e-4, clip_weights: str | None = None) -> ExportReport:
    """Write the model of ``checkpoint`` (a run's ``best.pt``) to ``output`` as ONNX and check it.

    Args:
        checkpoint: a checkpoint that holds a complete model (``best.pt``; a baseline's ``last.pt``).
        output: the ``.onnx`` file; its folder is created.
        opset: ONNX operator set version.
        device: where the model runs while it is exported and checked.
        atol: largest |onnxruntime - PyTorch| logit difference accepted.
        clip_weights: PromptPAR only: where the base CLIP weights are now, if moved.

    Raises:
        ParlabError: onnx/onnxruntime missing, the checkpoint holds no model, the model cannot be
            exported, or onnxruntime's logits differ from PyTorch's by more than ``atol``.
    """
    onnx, ort = _onnx_modules()
    checkpoint, output = Path(checkpoint), Path(output)
    if output.is_dir():
        raise ParlabError(f"{output}: is a folder; give the .onnx file to write")
    loaded = load_model(checkpoint, device, clip_weights=clip_weights)
    method, backbone = _method_and_backbone(loaded)
    model = _frozen_for_export(loaded.model)
    metadata = _metadata(loaded, method, backbone)
    h, w = loaded.data.image_size
    example = torch.zeros(1, 3, h, w, device=loaded.device)
    use_dynamo = method == "PromptPAR"
    results: dict[str, Any] = {}

    def write(tmp: str) -> None:
        proto = _export_proto(model, example, opset, use_dynamo, checkpoint)
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        proto.doc_string = "parlab: sigmoid(logits) > parlab.thresholds gives each attribute's label"
        try:
            onnx.save_model(proto, tmp)
        except ValueError as exc:  # protobuf's 2 GB limit
            raise ParlabError(f"{checkpoint}: the ONNX model cannot be saved as one file ({_one_line(exc)})") from exc
        # Checked before the rename: a file that disagrees with PyTorch never reaches ``output``.
        # The CPU provider: the reference runtime wherever the file is used later; loading also validates it.
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        diff = _max_abs_diff(lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0], model, loaded)
        if not diff <= atol:  # also catches NaN
            raise ParlabError(f"{checkpoint}: ONNX export disagrees with PyTorch: max |onnx - torch| = "
                              f"{diff:.3g} > atol {atol:g}; nothing written to {output}")
        results.update(diff=diff, opset=_default_opset(proto))

    write_atomic(output, write)
    return ExportReport(output, results["diff"], (int(h), int(w)), len(loaded.attributes), results["opset"])


def export_safetensors(checkpoint: str | Path, output: str | Path, device: str = "cpu",
                       atol: float = 1e-5) -> ExportReport:
    """Write a baseline's model to folder ``output`` as a timm classifier (``model.safetensors``, ``config.json``).

    The folder is a timm Hugging Face repository (see the module docstring): ``timm.create_model(
    "local-dir:FOLDER", pretrained=True)`` gives a model of (B, 3, H, W) images -> (B, A) logits, checked here:
    timm's loader must reproduce parlab's logits to ``atol`` on seeded random batches before either file is
    put in place. Each file is replaced whole (:func:`parlab.files.write_atomic`); others in the folder stay.

    Raises:
        ParlabError: the checkpoint holds no model, the model is no timm backbone with a linear head (FRDL,
            PromptPAR and the attribute heads are not), its input is letterboxed (timm's transforms cannot),
            or timm's logits differ from parlab's by more than ``atol``.
    """
    import timm

    checkpoint, output = Path(checkpoint), Path(output)
    if output.exists() and not output.is_dir():
        raise ParlabError(f"{output}: is a file; --format safetensors writes a folder ({', '.join(TIMM_FILES)})")
    loaded = load_model(checkpoint, device)
    net = _timm_classifier(loaded)
    method, backbone = _method_and_backbone(loaded)
    h, w = loaded.data.image_size
    transform = loaded.transform
    # timm's eval transform with these ("squash": a resize to exactly (H, W), crop_pct 1: no crop) is parlab's.
    data_config = {"input_size": (3, int(h), int(w)), "interpolation": "bilinear", "crop_pct": 1.0,
                   "crop_mode": "squash", "mean": tuple(transform.mean), "std": tuple(transform.std)}
    extra = {"thresholds": [float(t) for t in loaded.thresholds], **preprocessing_values(transform),
             "preprocess": preprocessing_recipe(transform), "version": __version__, "method": method,
             "backbone": backbone}
    with tempfile.TemporaryDirectory(prefix="parlab-export-") as tmp:
        timm.models.save_for_hf(net, tmp, model_config={"label_names": list(loaded.attributes), "parlab": extra},
                                data_config=data_config, safe_serialization=True)
        reloaded = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval()
        diff = _max_abs_diff(lambda x: reloaded(x).numpy(), loaded.model, loaded)
        if not diff <= atol:  # also catches NaN
            raise ParlabError(f"{checkpoint}: timm's loader disagrees with parlab: max |timm - torch| = {diff:.3g} > "
                              f"atol {atol:g}; nothing written to {output}")
        for name in TIMM_FILES:
            write_atomic(output / name, lambda dest, name=name: shutil.copyfile(Path(tmp) / name, dest))
    return ExportReport(output, diff, (int(h), int(w)), len(loaded.attributes), None, "timm")


def _timm_classifier(loaded: LoadedModel) -> nn.Module:
    """The baseline model of ``loaded`` as one timm model on the CPU: (B, 3, H, W) images -> (B, A) logits.

    The backbone (a timm model built without classifier) gets timm's own classifier back with A outputs, holding
    the linear head's weights; a ``linear_bn`` head's BatchNorm (in eval mode an affine map per attribute) is
    folded into them. Anything else is a one-line ParlabError naming what is supported.
    """
    model, head = loaded.model, getattr(loaded.model, "head", None)
    if not (isinstance(model, PARModel) and isinstance(head, LinearHead)):
        what = type(head if isinstance(model, PARModel) else model).__name__
        raise ParlabError(f"{loaded.source}: --format safetensors writes timm classifiers, i.e. a timm backbone with "
                          f"the 'linear' or 'linear_bn' head (baseline runs); this {loaded.method_name} model "
                          f"({what}) has none: use --format onnx")
    if loaded.transform.square:
        raise ParlabError(f"{loaded.source}: the model's input is letterboxed to a square, which timm's data config "
                          "cannot describe: use --format onnx")
    net = copy.deepcopy(model.backbone).cpu().float()
    net.reset_classifier(len(loaded.attributes))
    classifier = net.get_classifier()
    if not isinstance(classifier, nn.Linear) or classifier.in_features != head.fc.in_features:
        raise ParlabError(f"{loaded.source}: backbone {loaded.model_config.backbone!r} has a "
                          f"{type(classifier).__name__} classifier, not the linear layer on its pooled features "
                          "that the head is: use --format onnx")
    weight, bias = _folded_linear(head)
    with torch.no_grad():
        classifier.weight.copy_(weight)
        classifier.bias.copy_(bias)
    return net.eval()


def _folded_linear(head: LinearHead) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, C) weight and (A,) bias of the one linear layer that computes ``head`` in eval mode.

    BatchNorm after the linear layer, with running mean m, variance v, weight g and bias b, is
    ``(y - m) * g / sqrt(v + eps) + b``: a scale s and shift per attribute, so W' = s W and b' = s (b_fc - m) + b.
    Computed in float64, returned as float32.
    """
    weight, bias = head.fc.weight.detach().double().cpu(), head.fc.bias.detach().double().cpu()
    bn = head.bn
    if isinstance(bn, nn.BatchNorm1d):
        scale = (bn.running_var.detach().double().cpu() + bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.detach().double().cpu()
        shift = bn.bias.detach().double().cpu() if bn.bias is not None else torch.zeros_like(scale)
        weight, bias = weight * scale[:, None], (bias - bn.running_mean.detach().double().cpu()) * scale + shift
    return weight.float(), bias.float()


def _onnx_modules() -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules, or a ParlabError that says how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ParlabError(f"ONNX export needs the onnx and onnxruntime packages ({exc.name or exc} is missing): "
                          f"{INSTALL_HINT}") from None
    return onnx, onnxruntime


def _method_and_backbone(loaded: LoadedModel) -> tuple[str, str]:
    """The method that trained a model and its network: the CLIP architecture or the timm backbone."""
    clip_model = getattr(loaded.model_config, "clip_model", None)
    return loaded.method_name, str(clip_model if clip_model is not None else loaded.model_config.backbone)


def _frozen_for_export(model: nn.Module) -> nn.Module:
    """``model`` in eval mode; PromptPAR's sentence features computed once and kept as a constant.

    Without trained text prompts PromptPAR caches them already; with them, the text tower would
    otherwise be traced into the graph and rerun on every call for the same (A, D) result.
    """
    model.eval()
    if hasattr(model, "text_cache") and getattr(model, "text_cache", None) is None:
        with torch.no_grad():
            model.text_cache = model.text_features().detach()  # a registered buffer: plain assignment
    return model


def _export_proto(model: nn.Module, example: torch.Tensor, opset: int, use_dynamo: bool, source: Path):
    """The ONNX ModelProto of ``model`` with a dynamic batch axis; exporter failures become ParlabError."""
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated on every call; it still works
            # here and needs no onnxscript.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            with torch.no_grad():
                return _export_dynamo(model, example, opset) if use_dynamo else _export_traced(model, example, opset)
    except ParlabError:
        raise
    except Exception as exc:
        raise ParlabError(f"{source}: ONNX export failed ({type(exc).__name__}: {_one_line(exc)})") from exc


def _export_traced(model: nn.Module, example: torch.Tensor, opset: int):
    """TorchScript-based export (tracing), into memory: timm backbones and PAR heads trace cleanly."""
    import onnx

    buffer = io.BytesIO()
    extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(model, (example,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                      opset_version=opset, do_constant_folding=True, **extra)
    return onnx.load_model_from_string(buffer.getvalue())


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int):
    """``torch.export`` (strict) then the ONNX exporter: PromptPAR's ``len(x)`` stays symbolic.

    Tracing would record ``len(x)`` (the batch size, in PromptPAR's prompt expansion) as a constant
    and the non-strict ``torch.export`` specialises it; strict mode (TorchDynamo) keeps it a symbol.
    """
    try:
        import onnxscript  # noqa: F401  (the exporter imports it lazily; fail early, with the hint)
    except ImportError:
        raise ParlabError(f"exporting PromptPAR to ONNX needs the onnxscript package: {INSTALL_HINT}") from None
    example = example.expand(2, -1, -1, -1).contiguous()  # a batch of 1 would be specialised to 1
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=True)
    with _quiet("torch.onnx", "onnxscript"):  # "opset 17 is converted from 18": the report says which one
        onnx_program = torch.onnx.export(program, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                         opset_version=opset, dynamo=True, verbose=False)
    return onnx_program.model_proto


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Only errors from the loggers ``names`` while inside."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _metadata(loaded: LoadedModel, method: str, backbone: str) -> dict[str, str]:
    """``metadata_props`` of the file: what a consumer needs to prepare images and read logits."""
    values = {
        "attributes": list(loaded.attributes),
        "thresholds": [float(t) for t in loaded.thresholds],
        **preprocessing_values(loaded.transform),
    }
    props = {PREFIX + key: json.dumps(value) for key, value in values.items()}
    props.update({PREFIX + "preprocess": preprocessing_recipe(loaded.transform), PREFIX + "version": __version__,
                  PREFIX + "method": method, PREFIX + "backbone": backbone})
    return props


def preprocessing_values(transform: PARTransform) -> dict[str, Any]:
    """The evaluation ``transform`` as JSON values: ``input_size`` [H, W], ``mean``, ``std`` (R, G, B), ``resize``.

    ``resize``: "letterbox" (centred on a black square as wide as the longer side, then resized) or
    "stretch" (resized as it is); :func:`transform_from_metadata` reads them back.
    """
    h, w = transform.image_size
    return {"input_size": [int(h), int(w)],  # (height, width)
            "mean": [float(m) for m in transform.mean],
            "std": [float(s) for s in transform.std],
            "resize": next(name for name, square in GEOMETRIES.items() if square == transform.square)}


def preprocessing_recipe(transform: PARTransform) -> str:
    """The steps of :func:`preprocess` for ``transform``, in words, for a consumer without parlab."""
    h, w = transform.image_size
    steps = ["decode the image file in full (no reduced-scale JPEG decoding) and convert it to 8-bit RGB "
             "(16-bit greyscale divided by 257)"]
    if transform.square:
        steps.append("paste it on a black S x S square, S = max(width, height), at "
                     "((S - width) // 2, (S - height) // 2)")
    steps += [f"resize to width {w}, height {h} with PIL's Image.resize(size, Image.BILINEAR), which antialiases "
              "(what torchvision's resize does to a PIL image)",
              "divide by 255 to float in [0, 1]",
              f"subtract {PREFIX}mean and divide by {PREFIX}std per channel (R, G, B)",
              f"stack as (N, 3, {h}, {w}) float32 (NCHW)"]
    return "; ".join(f"{i}. {step}" for i, step in enumerate(steps, 1)) + \
        ". parlab.export.preprocess(path, metadata) does exactly this"


def transform_from_metadata(metadata: Mapping[str, str]) -> PARTransform:
    """The evaluation transform an exported file's metadata describes (``parlab.*`` keys, JSON values).

    Raises:
        ParlabError: a key is missing or unreadable (not the metadata of a parlab export).
    """
    values = {}
    for key in ("input_size", "mean", "std", "resize"):
        if PREFIX + key not in metadata:
            raise ParlabError(f"the metadata has no {PREFIX}{key}: not the metadata of a file parlab exported "
                              f"(keys: {', '.join(sorted(metadata)) or 'none'})")
        try:
            values[key] = json.loads(metadata[PREFIX + key])
        except (TypeError, ValueError):
            raise ParlabError(f"metadata {PREFIX}{key} is not JSON: {str(metadata[PREFIX + key])[:80]!r}") from None
    if values["resize"] not in GEOMETRIES:
        raise ParlabError(f"metadata {PREFIX}resize is {values['resize']!r}; known: {', '.join(GEOMETRIES)}")
    try:
        return PARTransform(tuple(values["input_size"]), train=False, mean=tuple(values["mean"]),
                            std=tuple(values["std"]), square=GEOMETRIES[values["resize"]])
    except (TypeError, ValueError, IndexError) as exc:
        raise ParlabError(f"metadata {PREFIX}input_size / mean / std cannot be used: {_one_line(exc)}") from None


def preprocess(image: str | Path | Image.Image, metadata: Mapping[str, str]) -> np.ndarray:
    """(1, 3, H, W) float32: ``image`` prepared as the exported model expects, as ``parlab predict`` prepares it.

    Args:
        image: an image file (decoded in full, as :func:`parlab.data.images.load_rgb` does: a broken file is
            a one-line error naming it) or a PIL image (converted to RGB).
        metadata: the exported file's ``parlab.*`` metadata, e.g. onnxruntime's
            ``InferenceSession(path).get_modelmeta().custom_metadata_map``.

    Concatenate several along axis 0 for a batch. The steps are ``parlab.preprocess`` in the metadata.
    """
    transform = transform_from_metadata(metadata)
    rgb = to_rgb(image) if isinstance(image, Image.Image) else load_rgb(image)
    return transform(rgb).unsqueeze(0).numpy()


def _max_abs_diff(run_exported: Callable[[torch.Tensor], np.ndarray], model: nn.Module,
                  loaded: LoadedModel) -> float:
    """Max |exported - PyTorch| of the logits on seeded random batches of :data:`CHECK_BATCHES` images.

    ``run_exported``: the written file's model, (B, 3, H, W) float32 CPU images -> (B, A) logits.
    """
    h, w = loaded.data.image_size
    generator = torch.Generator().manual_seed(CHECK_SEED)
    worst = 0.0
    for batch in CHECK_BATCHES:
        images = torch.randn(batch, 3, h, w, generator=generator)  # normalised images are roughly N(0, 1)
        with torch.no_grad():
            expected = model(images.to(loaded.device)).float().cpu().numpy()
            got = np.asarray(run_exported(images))
        if got.shape != expected.shape:
            return float("inf")
        diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
        if not np.isfinite(diff):  # NaN or inf on either side: never a pass (max() would drop a NaN)
            return float("nan")
        worst = max(worst, diff)
    return worst


def _default_opset(proto) -> int:
    """The version of the default ("ai.onnx") operator set the file imports."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")
