"""The ``parlab`` command: one subcommand per registered method, plus ``evaluate``, ``predict``, ``cam``, ``export``
and ``cache``.

Each method's subcommand (``train``, ``frdl``, ``promptpar``; see
:mod:`parlab.methods.registry`) takes every field of its run, data and method
configs as an option (``--backbone resnet50 --epochs 30 --image-size 256 192
--ema``), after an optional ``--config FILE``: a YAML or JSON file of fields,
flat or under ``run`` / ``data`` / ``method``, such as a run's own
``config.json`` (``parlab train --config runs/x/config.json --output-dir
runs/y`` trains that run again); options given on the command line win.
An option's help is its field's ``help`` metadata. All run on several GPUs or
nodes under torchrun::

    torchrun --nproc_per_node 4 -m parlab train --config pa100k.yaml --device cuda
    torchrun --nproc_per_node 4 -m parlab frdl --stage1 runs/pa100k_stage1 --goat --device cuda
    torchrun --nproc_per_node 4 -m parlab promptpar --config promptpar.yaml --device cuda

Building the parser imports no torch (the registry and the configs are
torch-free), so ``parlab --help`` answers at once; a user's mistake
(any :class:`~parlab.errors.ParlabError`) is one ``error: ...`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from parlab.errors import ParlabError, error_line
from parlab.methods.registry import MethodSpec, OptionGroup, available_methods
from parlab.training.config import choices_of, help_of, read_mapping
from parlab.training.record import CONFIG_KEYS, EARLIER_LAYOUT_KEYS, method_name_of

EXPORT_FORMATS = ("onnx", "safetensors")  # parlab export --format: export_onnx, export_safetensors


def _add_group(parser: argparse.ArgumentParser, group: OptionGroup) -> None:
    hints = typing.get_type_hints(group.config)
    options = parser.add_argument_group(group.title)
    for f in fields(group.config):
        if f.name in group.skip:
            continue
        default = group.defaults.get(f.name, f.default if f.default is not MISSING else None)
        hint = hints[f.name]
        about = f"{help_of(f)} " if help_of(f) else ""
        bounds = f.metadata.get("bounds", "")  # the range the config checks, e.g. ">= 1" or "in (0, 1]"
        allowed = f"; must be {bounds}" if bounds else ""
        kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS,
                        "help": f"{about}(default: {default!r}{allowed})".replace("%", "%%")}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is tuple:
            items = typing.get_args(hint)
            variable = len(items) == 2 and items[1] is Ellipsis  # tuple[int, ...] may be empty: --milestones
            kwargs |= {"nargs": "*" if variable else len(items), "type": items[0]}
        elif typing.get_origin(hint) in (typing.Union, types.UnionType):  # "str | None": a path or nothing
            kwargs["type"] = str
        else:
            kwargs["type"] = hint
            if choices_of(f):
                kwargs["choices"] = choices_of(f)
        options.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON or YAML file of config fields (flat, or under run, data "
                                                     "and method, as a run's config.json)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help="continue the run in --output-dir from last.pt")
    what.add_argument("--overwrite", action="store_true", help="discard the run in --output-dir and start again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines only)")


def _parser(methods: dict[str, MethodSpec]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parlab", description="Pedestrian attribute recognition workbench.")
    sub = parser.add_subparsers(dest="command", required=True)
    for spec in methods.values():
        method = sub.add_parser(spec.command, help=spec.help, description=spec.description)
        _add_run_options(method)
        for group in spec.groups:
            _add_group(method, group)

    ev = sub.add_parser("evaluate", help="PAR metrics of a checkpoint on a dataset split",
                        description="Evaluate a checkpoint on one split in one process.")
    ev.add_argument("checkpoint", type=Path)
    ev.add_argument("--dataset", help="dataset name (default: the run's)")
    ev.add_argument("--root", help="dataset folder (default: the run's)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--threshold", type=float, help="decision threshold (default: the run's fixed one)")
    ev.add_argument("--json", type=Path, help="also write the summary and per-attribute table as JSON")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ev.add_argument("--clip-weights", help="PromptPAR: where the base CLIP file is now (default: where the run read it)")

    pr = sub.add_parser("predict", help="attribute probabilities and labels for images",
                        description="Predict every image of the given files/folders; write CSV or JSON.")
    pr.add_argument("checkpoint", type=Path)
    pr.add_argument("inputs", nargs="+", type=Path, help="image files or folders (searched recursively)")
    pr.add_argument("--output", type=Path, required=True, help="result file, .csv or .json")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--threshold", type=float, help="one threshold for all attributes (default: the checkpoint's)")
    pr.add_argument("--clip-weights", help="PromptPAR: where the base CLIP file is now (default: where the run read it)")

    cm = sub.add_parser("cam", help="CAM overlays: one PNG per image and attribute, titled with the probability",
                        description="Write OUTPUT/{image stem}_{attribute}.png: the attribute's class activation "
                                    "map on the image at its own size, titled with the model's probability. Images "
                                    "whose PNGs would share a name (one stem in two folders) are refused.")
    cm.add_argument("checkpoint", type=Path, help="a best.pt or its run folder")
    cm.add_argument("images", nargs="+", type=Path, help="image files or folders (searched recursively)")
    cm.add_argument("--attribute", action="append", required=True, help="an attribute's name; repeat it for more")
    cm.add_argument("--method", default="gradcam", help="a name of parlab.visualisation.cam_methods() (default: "
                                                        "gradcam)")
    cm.add_argument("--output", type=Path, required=True, help="the folder of the PNGs (made when missing)")
    cm.add_argument("--overwrite", action="store_true", help="replace existing PNGs of the same names")
    cm.add_argument("--device", default="cpu")
    cm.add_argument("--clip-weights", help="PromptPAR: where the base CLIP file is now (default: where the run "
                                           "read it)")

    ex = sub.add_parser("export", help="an ONNX file (or timm safetensors) of a checkpoint, checked against PyTorch",
                        description="Export a best.pt to ONNX (dynamic batch; attributes, thresholds and the "
                                    "preprocessing in its metadata; needs pip install parlab[onnx]), or a baseline "
                                    "to a folder that timm loads (model.safetensors + config.json).")
    ex.add_argument("checkpoint", type=Path)
    ex.add_argument("--output", type=Path, required=True, help="the .onnx file; with --format safetensors, the folder")
    ex.add_argument("--format", choices=EXPORT_FORMATS, default=EXPORT_FORMATS[0],
                    help="onnx: any method; safetensors: timm's model.safetensors + config.json, for a timm backbone "
                         "with a linear head (baseline runs) (default: onnx)")
    ex.add_argument("--opset", type=int, default=17, help="ONNX operator set (default: 17)")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace an existing --output file (with --format safetensors: the folder's two files)")
    ex.add_argument("--clip-weights", help="PromptPAR: where the base CLIP file is now (default: where the run read it)")

    ca = sub.add_parser("cache", help="decode a dataset's images once into a uint8 cache at a training size",
                        description="Build the memory-mapped uint8 image cache that --image-cache reads (every "
                                    "method, every run at that size); an up-to-date one is reused.")
    ca.add_argument("folder", type=Path, help="the folder of caches (what --image-cache names)")
    ca.add_argument("--dataset", default="synthpa", help="registry name (parlab.data.available_datasets())")
    ca.add_argument("--root", required=True, help="dataset folder")
    ca.add_argument("--image-size", type=int, nargs=2, default=(256, 192), metavar=("HEIGHT", "WIDTH"))
    ca.add_argument("--workers", type=int, help="decoding processes (default: one per CPU core)")
    ca.add_argument("--square", action="store_true", help="letterbox each image to a square first (the promptpar "
                                                          "transform's geometry)")
    return parser


def option_values(spec: MethodSpec, args: argparse.Namespace) -> dict[str, dict]:
    """Each option group's values: its defaults, the ``--config`` file's, then the command line's on top.

    A flat file's field goes to the group that offers it as an option (else to the first group, whose
    config then names it as unknown); a file with ``run``, ``data`` and ``method`` sections (a run's
    ``config.json``) gives each group its section.
    """
    values: dict[str, dict] = {g.key: dict(g.defaults) for g in spec.groups}
    for key, section in (config_file_values(spec, args.config) if args.config else {}).items():
        values[key] |= section
    for g in spec.groups:
        values[g.key] |= {f.name: getattr(args, f.name) for f in fields(g.config)
                          if f.name not in g.skip and hasattr(args, f.name)}
    return values


def config_file_values(spec: MethodSpec, path: Path) -> dict[str, dict]:
    """The values a ``--config`` file gives each option group of ``spec``."""
    mapping = read_mapping(path)
    earlier = any(key in mapping for key in EARLIER_LAYOUT_KEYS)
    if earlier or any(isinstance(mapping.get(key), dict) for key in CONFIG_KEYS):  # sections, as a run records them
        if "versions" in mapping:  # a run's own record: it must be of this method
            name = method_name_of(mapping)
            if name not in spec.labels:
                raise ParlabError(f"{path}: a run of {name}, which parlab {spec.command} does not train")
        record = spec.task_class().upgrade_checkpoint(mapping) if earlier or "versions" in mapping else mapping
        keys = {g.key for g in spec.groups}
        return {key: dict(record[key]) for key in CONFIG_KEYS if key in keys and isinstance(record.get(key), dict)}
    values: dict[str, dict] = {}
    offered = {f.name: g.key for g in reversed(spec.groups) for f in fields(g.config) if f.name not in g.skip}
    for name, value in mapping.items():
        values.setdefault(offered.get(name, spec.groups[0].key), {})[name] = value
    return values


def _train(spec: MethodSpec, args: argparse.Namespace) -> int:
    """Build the method's task from the options and run it; rank 0 names the run folder."""
    from parlab.training.engine import fit

    task = spec.task_class().from_options(option_values(spec, args))
    existing = "resume" if args.resume else "overwrite" if args.overwrite else "error"
    result = fit(task, existing=existing, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        print(f"run folder: {result.output_dir}")
    return 0


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an output path before any work: an existing file (unless ``overwrite``), a missing folder."""
    if path.exists() and not overwrite:
        raise ParlabError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise ParlabError(f"{path} is a folder; name the output file")
    if not path.parent.is_dir():
        raise ParlabError(f"{path.parent}: no such folder for the output {path.name}")


def check_output_folder(folder: Path, names: tuple[str, ...], overwrite: bool) -> None:
    """Refuse an output folder before any work: a file there, files ``names`` in it (unless ``overwrite``)."""
    if folder.exists() and not folder.is_dir():
        raise ParlabError(f"{folder} is a file; name the folder to write {', '.join(names)} in")
    present = [name for name in names if (folder / name).exists()]
    if present and not overwrite:
        raise ParlabError(f"{folder} holds {', '.join(present)}; pass --overwrite to replace")
    if not folder.parent.is_dir():
        raise ParlabError(f"{folder.parent}: no such folder for the output {folder.name}")


def write_output(path: Path, write) -> None:
    """``write(tmp)`` into a temporary file, renamed onto ``path``: a failed write leaves no partial file."""
    from parlab.files import write_atomic

    try:
        write_atomic(path, write)
    except ParlabError:  # a full disk: already one line naming the file
        raise
    except OSError as exc:
        raise ParlabError(f"cannot write {path}: {exc.strerror or exc}") from None


def frame_json(frame) -> dict:
    """A DataFrame as ``{index: {column: value}}``: NaN as null (as pandas writes it), numbers to 15 digits.

    pandas' JSON text escapes every "/" (``"cam1\\/0001.jpg"``); parsed back here, :func:`write_json` writes it plain.
    """
    return json.loads(frame.to_json(orient="index", double_precision=15))


def write_json(path: str | Path, payload) -> None:
    """``payload`` as indented UTF-8 JSON: "/" and non-ASCII characters (in image paths) as they are."""
    Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _evaluate(args: argparse.Namespace) -> int:
    from parlab.inference import evaluate, load_model

    if args.json:
        check_output(args.json, args.overwrite)
    loaded = load_model(args.checkpoint, args.device, args.clip_weights)
    m = evaluate(loaded, args.dataset, args.root, args.split, args.device, args.batch_size, args.threshold)
    summary = m.summary()
    print(f"{args.checkpoint} on {m.setting} {args.split}: "
          + "  ".join(f"{k} {summary[k]:.2f}" for k in ("ma", "acc", "prec", "rec", "f1")))
    if m.num_degenerate:
        print(f"{m.num_degenerate} degenerate attribute(s) excluded from mA")
    if args.json:
        payload = {"summary": summary, "per_attribute": frame_json(m.per_attribute)}
        write_output(args.json, lambda tmp: write_json(tmp, payload))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from parlab.inference import list_images, load_model, predict

    suffix = args.output.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ParlabError(f"--output must end in .csv or .json, got {args.output}")
    check_output(args.output, args.overwrite)
    loaded = load_model(args.checkpoint, args.device, args.clip_weights)
    files = [f for item in args.inputs for f in list_images(item)]
    table = predict(loaded, files, batch_size=args.batch_size, threshold=args.threshold)
    if suffix == ".csv":
        write_output(args.output, table.to_csv)
    else:
        write_output(args.output, lambda tmp: write_json(tmp, frame_json(table)))
    print(f"{len(table)} images -> {args.output}")
    return 0


def _cam(args: argparse.Namespace) -> int:
    from parlab.visualisation.cam_files import write_cams

    for cam in write_cams(args.checkpoint, args.images, args.attribute, args.output, args.method, args.overwrite,
                          args.device, args.clip_weights):
        print(f"{cam.path}  {cam.attribute} p={cam.probability:.3f}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from parlab.export import TIMM_FILES, export_onnx, export_safetensors

    if args.format == "safetensors":
        check_output_folder(args.output, TIMM_FILES, args.overwrite)
        report = export_safetensors(args.checkpoint, args.output)
    else:
        check_output(args.output, args.overwrite)
        report = export_onnx(args.checkpoint, args.output, opset=args.opset, clip_weights=args.clip_weights)
    print(report.summary())
    return 0


def _cache(args: argparse.Namespace) -> int:
    from parlab.data import load_dataset
    from parlab.data.image_cache import build_image_cache

    annotations = load_dataset(args.dataset, args.root)
    cache = build_image_cache(args.folder, annotations, tuple(args.image_size), workers=args.workers,
                              square=args.square)
    print(f"{cache.folder}: {len(cache.images)} images at {args.image_size[0]}x{args.image_size[1]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        methods = available_methods()
    except ParlabError as exc:  # a method plugin that fails to load
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 1
    args = _parser(methods).parse_args(argv)
    try:
        if args.command in methods:
            return _train(methods[args.command], args)
        commands = {"evaluate": _evaluate, "predict": _predict, "cam": _cam, "export": _export, "cache": _cache}
        return commands[args.command](args)
    except (ParlabError, OSError) as exc:  # OSError: a folder or file the system refuses (permissions, a full disk)
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: a run keeps the checkpoint of its last finished epoch
        again = " (resume a run with --resume: it continues from its last finished epoch)" \
            if args.command in methods else ""
        print(f"error: interrupted{again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
