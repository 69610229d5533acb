"""Export a trained checkpoint to ONNX, checked against PyTorch before it is kept.

``export_onnx(checkpoint, "model.onnx")`` rebuilds the model with
:func:`parlab.inference.load_model` and writes an ONNX graph with one input,
``images`` (B, 3, H, W) float32 normalised with the run's mean and std, and one
output, ``logits`` (B, A); the batch axis B is dynamic. ``sigmoid(logits) >
thresholds`` gives the same labels as :func:`parlab.predict`. Everything a
consumer needs to prepare images and read the outputs travels in the file's
``metadata_props`` (keys ``parlab.*``, values JSON or plain strings): attribute
names, thresholds, input size, normalisation, method, backbone and parlab's version.

Before the file is put in place, onnxruntime runs it on a seeded random batch
of 3 images and on a batch of 1 (a graph that baked in the batch size fails
there) and its logits must agree with PyTorch's to ``atol``; a file that does
not is never written. The write is atomic (:func:`parlab.files.write_atomic`),
so an existing file at ``output`` is either replaced whole or left untouched.

Timm-backbone models (the baseline, FRDL) use PyTorch's TorchScript exporter,
which needs only ``onnx``; PromptPAR uses the ``torch.export`` exporter, which
also needs ``onnxscript``. ``pip install parlab[onnx]`` installs all three and
onnxruntime.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from parlab._version import __version__
from parlab.errors import ParlabError
from parlab.files import write_atomic
from parlab.inference import LoadedModel, load_model

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
CHECK_BATCHES = (3, 1)  # 3 random images, then 1: a batch size baked into the graph fails the second
CHECK_SEED = 0
INSTALL_HINT = "pip install parlab[onnx]"


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how closely onnxruntime reproduces PyTorch."""

    output: Path
    max_abs_diff: float  # max |onnxruntime logits - PyTorch logits| over the check batches
    image_size: tuple[int, int]  # (height, width) of the ``images`` input
    num_attributes: int
    opset: int  # of the written file (the torch.export exporter may keep a newer one than asked)

    def summary(self) -> str:
        """One line, e.g. ``model.onnx: 26 attributes, input 64x32, max |onnx - torch| = 2.4e-06``."""
        h, w = self.image_size
        return (f"{self.output}: {self.num_attributes} attributes, input {h}x{w}, "
                f"max |onnx - torch| = {self.max_abs_diff:.1e}")


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
        diff = _max_abs_diff(ort, tmp, model, loaded)
        if not diff <= atol:  # also catches NaN
            raise ParlabError(f"{checkpoint}: ONNX export disagrees with PyTorch: max |onnx - torch| = "
                              f"{diff:.3g} > atol {atol:g}; nothing written to {output}")
        results.update(diff=diff, opset=_default_opset(proto))

    write_atomic(output, write)
    return ExportReport(output, results["diff"], (int(h), int(w)), len(loaded.attributes), results["opset"])


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
    mean, std = _normalisation(loaded.transform)
    h, w = loaded.data.image_size
    values = {
        "attributes": list(loaded.attributes),
        "thresholds": [float(t) for t in loaded.thresholds],
        "input_size": [int(h), int(w)],  # (height, width)
        "mean": mean,
        "std": std,
        # "letterbox": centred on a black square as wide as the longer side, then resized; "stretch": resized
        "resize": "letterbox" if getattr(loaded.transform, "square", False) else "stretch",
    }
    props = {f"parlab.{key}": json.dumps(value) for key, value in values.items()}
    props.update({"parlab.version": __version__, "parlab.method": method, "parlab.backbone": backbone})
    return props


def _normalisation(transform) -> tuple[list[float], list[float]]:
    """(mean, std) of the transform's Normalize step (ImageNet's or CLIP's, per method)."""
    mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
    if mean is None or std is None:  # PARTransform keeps them only in its torchvision Normalize
        from torchvision.transforms import Normalize

        steps = getattr(transform.normalize, "transforms", [transform.normalize])
        norm = next(step for step in steps if isinstance(step, Normalize))
        mean, std = norm.mean, norm.std
    return [float(m) for m in mean], [float(s) for s in std]


def _max_abs_diff(ort, path: str, model: nn.Module, loaded: LoadedModel) -> float:
    """Max |onnxruntime - PyTorch| of the logits on seeded random batches of :data:`CHECK_BATCHES` images."""
    # The CPU provider: the reference runtime wherever the file is used later; loading also validates it.
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    h, w = loaded.data.image_size
    generator = torch.Generator().manual_seed(CHECK_SEED)
    worst = 0.0
    for batch in CHECK_BATCHES:
        images = torch.randn(batch, 3, h, w, generator=generator)  # normalised images are roughly N(0, 1)
        with torch.no_grad():
            expected = model(images.to(loaded.device)).float().cpu().numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
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
