"""The ``parlab`` command: ``train``, ``frdl``, ``promptpar``, ``evaluate`` and ``predict``.

``parlab train`` takes every :class:`~parlab.training.TrainConfig` field as an
option (``--backbone resnet50 --epochs 30 --image-size 256 192 --ema``), after
an optional ``--config file.yaml``; options given on the command line win.
``parlab frdl`` does the same with :class:`~parlab.methods.frdl_config.FRDLConfig`
(FRDL's stage 2 on a stage-1 run, with ``--goat`` for GOAT). ``parlab
promptpar`` takes the run's TrainConfig fields (defaults: the paper's
optimisation) and the PromptPARConfig fields (``--weights`` is the CLIP file).
All run on several GPUs or nodes under torchrun::

    torchrun --nproc_per_node 4 -m parlab train --config pa100k.yaml --device cuda
    torchrun --nproc_per_node 4 -m parlab frdl --stage1 runs/pa100k_stage1 --goat --device cuda
    torchrun --nproc_per_node 4 -m parlab promptpar --config promptpar.yaml --device cuda
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from parlab.methods.frdl_config import FRDL_CHOICES, FRDLConfig
from parlab.methods.promptpar.config import FUSIONS, PAPER_SETTINGS, PROMPTPAR_UNUSED, PromptPARConfig
from parlab.training.config import CHOICES, TrainConfig, read_mapping


def _field_comments(cls) -> dict[str, str]:
    """The comment after each config field, where the fields are documented once."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def _add_config_options(parser: argparse.ArgumentParser, cls, choices: dict, title: str,
                        skip: tuple[str, ...] = (), defaults: dict | None = None) -> None:
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    group = parser.add_argument_group(title)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = (defaults or {}).get(f.name, f.default if f.default is not MISSING else None)
        hint = hints[f.name]
        about = f"{comments[f.name]} " if f.name in comments else ""
        kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS,
                        "help": f"{about}(default: {default!r})".replace("%", "%%")}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is tuple:
            kwargs |= {"nargs": "+", "type": int}
        elif typing.get_origin(hint) in (typing.Union, types.UnionType):  # "str | None": a path or nothing
            kwargs["type"] = str
        else:
            kwargs["type"] = hint
            if f.name in choices:
                kwargs["choices"] = choices[f.name]
        group.add_argument(flag, **kwargs)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON or YAML file of config fields")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help="continue the run in --output-dir from last.pt")
    what.add_argument("--overwrite", action="store_true", help="discard the run in --output-dir and start again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines only)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parlab", description="Pedestrian attribute recognition workbench.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (one process, or every process under torchrun)",
                           description="Train, select on validation, evaluate test once; writes --output-dir.")
    _add_run_options(train)
    _add_config_options(train, TrainConfig, CHOICES, "config fields (defaults: the Rethinking_of_PAR baseline)")

    frdl = sub.add_parser("frdl", help="FRDL stage 2 (and GOAT) on a stage-1 run",
                          description="Train FRDL's balanced heads on a stage-1 run (head 'attribute'); "
                                      "writes --output-dir.")
    _add_run_options(frdl)
    _add_config_options(frdl, FRDLConfig, FRDL_CHOICES,
                        "config fields (defaults: the public code's PA100k setting)")

    promptpar = sub.add_parser("promptpar", help="PromptPAR prompt tuning on a CLIP",
                               description="Prompt-tune PromptPAR on a local CLIP weights file; writes --output-dir.")
    _add_run_options(promptpar)
    _add_config_options(promptpar, TrainConfig, CHOICES, "run fields (defaults: the paper's optimisation)",
                        skip=PROMPTPAR_UNUSED, defaults=PAPER_SETTINGS)
    _add_config_options(promptpar, PromptPARConfig, {"fusion": FUSIONS}, "PromptPAR fields",
                        skip=("num_attributes", "attribute_sentences", "image_size"))

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
    ev.add_argument("--clip-weights", help="PromptPAR: where the base CLIP file is now (default: where the run read it)")

    pr = sub.add_parser("predict", help="attribute probabilities and labels for images",
                        description="Predict every image of the given files/folders; write CSV or JSON.")
    pr.add_argument("checkpoint", type=Path)
    pr.add_argument("inputs", nargs="+", type=Path, help="image files or folders (searched recursively)")
    pr.add_argument("--output", type=Path, required=True, help="result file, .csv or .json")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--threshold", type=float, help="one threshold for all attributes (default: the checkpoint's)")
    pr.add_argument("--clip-weights", help="PromptPAR: where the base CLIP file is now (default: where the run read it)")
    return parser


def _promptpar(args: argparse.Namespace) -> int:
    from parlab.methods.promptpar import promptpar_run_config, train_promptpar

    values = read_mapping(args.config) if args.config else {}
    names = {f.name for f in fields(PromptPARConfig)} - {"image_size"}
    model_values = {k: v for k, v in values.items() if k in names}
    run_values = {k: v for k, v in values.items() if k not in names}
    run_values |= {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                   if f.name not in PROMPTPAR_UNUSED and hasattr(args, f.name)}
    model_values |= {f.name: getattr(args, f.name) for f in fields(PromptPARConfig) if hasattr(args, f.name)}
    model_config = PromptPARConfig.from_dict(model_values)
    return _start(args, lambda **kw: train_promptpar(promptpar_run_config(**run_values), model_config, **kw))


def _run(args: argparse.Namespace, cls, train) -> int:
    values = cls.from_file(args.config).to_dict() if args.config else {}
    values |= {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    config = cls.from_dict(values)
    return _start(args, lambda **kw: train(config, **kw))


def _start(args: argparse.Namespace, train) -> int:
    """Run ``train(existing=..., progress=...)`` as the run options say; rank 0 names the run folder."""
    existing = "resume" if args.resume else "overwrite" if args.overwrite else "error"
    result = train(existing=existing, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        print(f"run folder: {result.output_dir}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from parlab.training import train

    return _run(args, TrainConfig, train)


def _frdl(args: argparse.Namespace) -> int:
    from parlab.methods.frdl_training import train_frdl

    return _run(args, FRDLConfig, train_frdl)


def _evaluate(args: argparse.Namespace) -> int:
    from parlab.inference import evaluate, load_model

    loaded = load_model(args.checkpoint, args.device, args.clip_weights)
    m = evaluate(loaded, args.dataset, args.root, args.split, args.device, args.batch_size, args.threshold)
    summary = m.summary()
    print(f"{args.checkpoint} on {m.setting} {args.split}: "
          + "  ".join(f"{k} {summary[k]:.2f}" for k in ("ma", "acc", "prec", "rec", "f1")))
    if m.num_degenerate:
        print(f"{m.num_degenerate} degenerate attribute(s) excluded from mA")
    if args.json:
        payload = {"summary": summary, "per_attribute": json.loads(m.per_attribute.to_json(orient="index"))}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from parlab.inference import list_images, load_model, predict

    loaded = load_model(args.checkpoint, args.device, args.clip_weights)
    files = [f for item in args.inputs for f in list_images(item)]
    table = predict(loaded, files, batch_size=args.batch_size, threshold=args.threshold)
    suffix = args.output.suffix.lower()
    if suffix == ".csv":
        table.to_csv(args.output)
    elif suffix == ".json":
        args.output.write_text(table.to_json(orient="index", indent=2))
    else:
        raise SystemExit(f"error: --output must end in .csv or .json, got {args.output}")
    print(f"{len(table)} images -> {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from parlab.data.errors import DatasetError
    from parlab.models import BackboneError
    from parlab.training import CheckpointError, TrainingDiverged

    args = _parser().parse_args(argv)
    handler = {"train": _train, "frdl": _frdl, "promptpar": _promptpar, "evaluate": _evaluate,
               "predict": _predict}[args.command]
    try:
        return handler(args)
    except (DatasetError, BackboneError, CheckpointError, TrainingDiverged, FileExistsError,
            FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
