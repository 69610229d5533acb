"""Run the ordered notebooks headless with papermill.

``python -m parlab.reproduce --profile {smoke,default,full} [--only 01,02]`` runs
each notebook of :data:`NOTEBOOKS` with the profile's parameters, writes the
executed copies to ``runs/<profile>/`` and stops at the first failure with a
non-zero exit naming the notebook and the failing cell.

Profiles: ``smoke`` is what the tests run (small SynthPA, minutes in all);
``default`` is what ``make reproduce`` runs (SynthPA default size, 3-epoch
schedules, under 30 minutes on a 2-core CPU); ``full`` adds what does not fit
that time (5-epoch schedules, the logit-BN stage 1, every PromptPAR ablation
over three seeds; figures under ``runs/full/figures``); ``paper``
runs the papers' settings on a real dataset::

    python -m parlab.reproduce --profile paper --dataset pa100k --root /data/PA100k --device cuda

which starts the CNNs from timm's ``resnet50.tv_in1k`` and PromptPAR from open_clip's ``openai`` ViT-L/14 and
timm's ImageNet ViT-B/16 block (through the libraries' loaders and the Hugging Face cache), trains on trainval
and selects on test as the public code does (``--set protocol=honest train_split=train`` for the honest
protocol).

Every profile runs on another dataset too, in its figures and runs folders
``runs/<profile>-<dataset>/``, with ``--set KEY=VALUE`` for any notebook parameter::

    python -m parlab.reproduce --dataset custom --root my_people

A notebook that needs what the dataset lacks is skipped, saying why (PromptPAR
pretrains its small CLIP on SynthPA's captions: elsewhere it needs
``--set clip_weights=openai`` or a file). The dataset, its images and the
weights files are checked before the first notebook; each notebook's progress
(cell n of m, the time, what it prints) goes to the console; ``--dry-run``
prints each notebook's parameters and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from parlab.errors import ConfigError, ParlabError

REPO = Path(__file__).resolve().parent.parent

# Ordered notebooks; later ones plug in here.
NOTEBOOKS: tuple[str, ...] = ("01_data_exploration", "02_label_imbalance", "03_baseline", "04_frdl_goat",
                               "05_promptpar", "06_visualisation", "07_results")



@dataclass(frozen=True)
class Profile:
    """Parameters shared by every notebook of a run."""

    name: str
    synthpa_size: str
    data_root: str  # relative to the repository (or absolute)
    figures_dir: str  # relative to the repository
    runs_dir: str  # relative to the repository: one folder per training run
    training: dict = field(default_factory=dict)  # training parameters, for the notebooks that declare them
    seed: int = 0
    extra: dict[str, dict] = field(default_factory=dict)  # per-notebook overrides
    dataset: str = "synthpa"
    overrides: dict = field(default_factory=dict)  # last word, for every notebook that declares the key (--set)
    sources: dict[str, dict] = field(default_factory=dict)  # per notebook: parameter -> where its value is read

    def parameters(self, notebook: str, repo: Path, declared: set[str]) -> dict:
        """The profile's parameters that the notebook declares (``declared``: its parameter names).

        Every notebook runs headless (no widgets, no progress bars) on the profile's data and runs
        folder; per-notebook ``extra`` values must be parameters of that notebook.
        """
        shared = {
            "dataset": self.dataset,
            "root": str(repo / self.data_root),
            "synthpa_size": self.synthpa_size,
            "figures_dir": str(repo / self.figures_dir),
            "runs_dir": str(repo / self.runs_dir),
            "image_cache": str(repo / Path(self.runs_dir).parent / "cache"),  # every notebook's runs at one size
            "seed": self.seed,
            "interactive": False,
            "progress": False,
            **self.training,
        }
        extra = self.extra.get(notebook, {})
        unknown = sorted(set(extra) - declared)
        if unknown:
            raise ConfigError(f"profile {self.name!r} sets {', '.join(unknown)}, not parameters of {notebook}")
        return {k: v for k, v in (shared | extra | self.overrides).items() if k in declared}


PROFILES: dict[str, Profile] = {
    # Seconds per training run: a tiny timm test network on 800 images.
    "smoke": Profile("smoke", "smoke", "data/synthpa-smoke", "runs/smoke/figures", "runs/smoke/train",
                     training={"backbone": "test_resnet", "epochs": 2, "batch_size": 32, "image_size": [64, 32]},
                     extra={"04_frdl_goat": {"frdl_epochs": 2, "balance_start": 1, "feature_cache": 0,
                                             "seeds": [0, 1]},
                            "05_promptpar": {"clip_corpus_size": 512, "clip_epochs": 1, "vis_prompt": 10,
                                             "seeds": [0], "ablation": True, "ablation_seeds": [0],
                                             "count_large_models": False}}),
    # The notebooks' own defaults (a few minutes per run on a 2-core CPU).
    "default": Profile("default", "default", "data/synthpa", "figures", "runs/default/train"),
    # What does not fit the default's 30 minutes: 5-epoch schedules, the logit-BN stage 1 and every PromptPAR
    # ablation over three seeds.
    "full": Profile("full", "default", "data/synthpa", "runs/full/figures", "runs/full/train",
                    training={"epochs": 5},
                    extra={"04_frdl_goat": {"frdl_epochs": 5, "balance_start": 2, "logit_bn_ablation": True},
                           "05_promptpar": {"ablation": True}}),  # the notebook's ablation_seeds: 0, 1, 2
}


# The papers' settings per dataset, as each public code runs them (docs/methods.md sections 3-5): the Rethinking_of_PAR
# recipe at 256x192 from torchvision's ImageNet ResNet-50, FRDL's public stage-2 schedule, PromptPAR on CLIP
# ViT-L/14 at 224x224. Every run trains on trainval and selects on test (the reference protocol), as that code does.
PAPER_DATASETS = ("pa100k", "peta", "rapv1", "rapv2", "petazs", "rapzs", "wider")
LABELS_ONLY = ("01_data_exploration", "02_label_imbalance")  # these read annotations, never images
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
PAPER_BASELINE = {"backbone": "resnet50.tv_in1k", "weights": "pretrained", "epochs": 30, "batch_size": 64,
                  "image_size": [256, 192], "lr": 1e-4, "scheduler": "plateau", "warmup_epochs": 0, "num_workers": 8,
                  "protocol": "reference", "train_split": "trainval"}
PAPER_PROMPTPAR = {"clip_model": "ViT-L-14-quickgelu", "clip_weights": "openai", "image_size": [224, 224],
                   "transform": "promptpar", "threshold": 0.45, "fusion": "vit_b16", "fusion_weights": "pretrained",
                   "vis_prompt": 50, "vis_depth": 24, "epochs": 100, "batch_size": 16, "optimizer": "sgd", "lr": 8e-3,
                   "prompt_lr": 4e-3, "weight_decay": 1e-4, "warmup_epochs": 5, "prompt_warmup_epochs": 10,
                   "logit_bn": True, "precise_bn": 0, "seeds": [0], "ablation": False}  # BatchNorm as the paper's code
# Where each public setting is read (printed by --dry-run beside the parameters).
PAPER_SOURCES = {
    "03_baseline": {
        "backbone": "Rethinking_of_PAR models/backbone/resnet.py line 12: torchvision's resnet50-19c8e357.pth "
                    "(timm's resnet50.tv_in1k)",
        "epochs": "Rethinking_of_PAR configs/default.py line 55 (MAX_EPOCH 30; no config sets it)",
        "protocol": "Rethinking_of_PAR configs/pedes_baseline/*.yaml lines 6-7 (TRAIN_SPLIT trainval, VAL_SPLIT test)",
        "ema": "Rethinking_of_PAR configs/pedes_baseline/pa100k.yaml lines 47-48 (PA100k only)",
    },
    "04_frdl_goat": {
        "frdl_epochs": "FRDL repo configs pedes_baseline/{pa100k,peta,rapv1}.yaml (MAX_EPOCH 20, 35, 18)",
        "backbone": "the FRDL configs train ConvNeXt-B from convnext_base_22k_224.pth (convnext.py line 158): "
                    "--set backbone=convnext_base.fb_in22k",
    },
    "05_promptpar": {
        "epochs": "OpenPAR PromptPAR/config.py line 11 (--epoch, default 100)",
        "threshold": "OpenPAR PromptPAR/tools/function.py line 88 (threshold=0.45)",
        "transform": "OpenPAR README line 172 (images padded to a square with black borders) and "
                     "PromptPAR/dataset/AttrDataset.py line 96 (mean and std 0.5)",
        "fusion_weights": "OpenPAR PromptPAR/models/base_block.py line 9 (jx_vit_base_p16_224-80ecf9dd.pth: "
                          "timm's vit_base_patch16_224.orig_in21k_ft_in1k)",
        "clip_weights": "OpenPAR PromptPAR/train.py line 24 (clip.load('ViT-L/14'): open_clip's openai tag)",
    },
}


def paper_profile(dataset: str, root: str, device: str = "cuda", weights: str = "pretrained",
                  clip_weights: str = "openai", fusion_weights: str = "pretrained", amp: str = "bf16") -> Profile:
    """The ``paper`` profile for one of :data:`PAPER_DATASETS` in its folder ``root``.

    ``weights``: the ImageNet ResNet-50 backbone ("pretrained": timm's ``resnet50.tv_in1k``, the weights every
    public config starts from; a local file or a hub id; "none" for random weights, which the tables then
    show); ``clip_weights``: the CLIP ViT-L/14 of notebook 05 (open_clip's ``openai`` tag, or a file);
    ``fusion_weights``: the ImageNet ViT-B/16 of the paper's fusion block ("pretrained" through timm).
    """
    from parlab.methods.frdl_config import frdl_defaults

    key = dataset.lower()
    if key not in PAPER_DATASETS:
        raise ConfigError(f"the paper profile knows {', '.join(PAPER_DATASETS)}, not {dataset!r}")
    if not weights:
        raise ConfigError("the paper profile starts from ImageNet weights (--weights pretrained, a file or a hub "
                          "id); --set weights=none trains from random weights, labelled as such")
    if not fusion_weights:
        raise ConfigError("the paper's fusion block is the ImageNet ViT-B/16's last block: --fusion-weights "
                          "pretrained (timm's vit_base_patch16_224.orig_in21k_ft_in1k), a file or a hub id")
    stage2 = frdl_defaults(key)
    run2, frdl = stage2["run"], stage2["method"]
    training = PAPER_BASELINE | {"weights": weights, "device": device, "amp": amp}
    extra = {
        # The reference keeps an EMA of the weights on PA100k.
        "03_baseline": {"ema": key == "pa100k"},
        "04_frdl_goat": {"frdl_epochs": run2["epochs"], "balance_start": frdl["balance_start"],
                         "frdl_milestones": list(frdl["milestones"]), "frdl_gamma": frdl["gamma"],
                         "frdl_lr": frdl["lr"], "frdl_grad_clip": frdl["grad_clip"], "feature_cache": 0,
                         "logit_bn_ablation": True} if run2 else {"logit_bn_ablation": True},
        "05_promptpar": PAPER_PROMPTPAR | {"clip_weights": clip_weights, "fusion_weights": fusion_weights},
    }
    return Profile("paper", "", str(Path(root).resolve()), f"runs/paper-{key}/figures", f"runs/paper-{key}/train",
                   training=training, extra=extra, dataset=key, sources=PAPER_SOURCES)


def on_dataset(profile: Profile, dataset: str, root: str) -> Profile:
    """``profile`` on dataset ``dataset`` in folder ``root``, its figures and runs under
    ``runs/<profile>-<dataset>/`` (SynthPA's stay where they are)."""
    from parlab.data import available_datasets

    key = dataset.lower().replace("-", "").replace("_", "")
    if key not in available_datasets():
        raise ConfigError(f"unknown dataset {dataset!r}; known datasets: {', '.join(available_datasets())}")
    base = f"runs/{profile.name}-{key}"
    return replace(profile, dataset=key, data_root=str(Path(root).resolve()), figures_dir=f"{base}/figures",
                   runs_dir=f"{base}/train")


def skipped_notebooks(profile: Profile, notebooks: list[str]) -> dict[str, str]:
    """The notebooks of ``notebooks`` that need what the profile's dataset lacks, each with why."""
    parameters = profile.extra.get("05_promptpar", {}) | profile.overrides
    if "05_promptpar" in notebooks and profile.dataset != "synthpa" and not parameters.get("clip_weights"):
        return {"05_promptpar": f"PromptPAR needs CLIP weights on {profile.dataset} (only SynthPA has captions to "
                                "pretrain one on): --set clip_weights=openai (through open_clip's cache) or a file"}
    return {}


def check_inputs(profile: Profile, notebooks: list[str]) -> None:
    """Before the first notebook, on a dataset other than SynthPA (which the notebooks generate): the dataset
    reads, its images are there, the weights files exist.

    Raises one :class:`~parlab.errors.ParlabError` naming what is missing.
    """
    from parlab.data import load_dataset
    from parlab.errors import MissingFileError
    from parlab.models.weights import is_hub_id

    if profile.dataset == "synthpa":
        return
    root = Path(profile.data_root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: no such dataset folder (--root)")
    annotations = load_dataset(profile.dataset, root)
    paths = annotations.image_paths() if set(notebooks) - set(LABELS_ONLY) else []
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"{len(missing)} of {len(paths)} images of {profile.dataset} are missing under "
                               f"{annotations.image_root}, e.g. {', '.join(str(p) for p in missing[:3])}")
    trains = any(n in ("03_baseline", "04_frdl_goat") for n in notebooks)
    needs = {"weights": (profile.training | profile.overrides).get("weights", "") if trains else ""}
    if "05_promptpar" in notebooks:
        clip = profile.extra.get("05_promptpar", {}) | profile.overrides
        needs |= {"clip weights": clip["clip_weights"], "fusion weights": clip.get("fusion_weights", "")}
    for what, value in needs.items():
        # "pretrained", hf-hub:ID and open_clip's tags ("openai") are fetched by the libraries' loaders.
        local = value and not is_hub_id(value) and ("/" in value or Path(value).suffix in WEIGHT_SUFFIXES)
        if local and not Path(value).is_file():
            raise MissingFileError(f"{value}: {what} file not found")


@dataclass(frozen=True)
class NotebookRun:
    notebook: str
    output: Path
    seconds: float


class NotebookFailed(RuntimeError):
    """A notebook raised; names the notebook and the failing cell."""


class _Console(logging.Handler):
    """A notebook's progress on the console: papermill's "Executing Cell N" records as "cell N/M (T s)" lines,
    and what the notebook prints (the training's epoch lines), indented. Everything else papermill logs (the
    outputs again, tables as text) is left out."""

    def __init__(self, prefix: str, cells: int, log) -> None:
        super().__init__(logging.INFO)
        self.prefix, self.cells, self.log = prefix, cells, log
        self.start = time.perf_counter()
        self.partial = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing Cell "):
            cell = message[len("Executing Cell "):].strip("-")
            self.log(f"{self.prefix} cell {cell}/{self.cells} ({time.perf_counter() - self.start:.0f} s)")

    def write(self, text: str) -> None:
        """The kernel's stdout and stderr (papermill's ``stdout_file`` / ``stderr_file``), a line at a time."""
        lines = (self.partial + text).replace("\r", "\n").split("\n")
        self.partial = lines.pop()
        for line in lines:
            if line.strip():
                self.log(f"    {line}")

    def flush(self) -> None:
        pass


def run_notebooks(
    profile: str | Profile,
    only: list[str] | None = None,
    output_dir: str | Path | None = None,
    repo: Path = REPO,
    log=print,
) -> list[NotebookRun]:
    """Execute the notebooks of ``profile`` in order, their progress through ``log``; raise :class:`NotebookFailed`
    on error. Notebooks that need what the dataset lacks are skipped, said through ``log``
    (:func:`skipped_notebooks`)."""
    import papermill as pm

    prof = profile if isinstance(profile, Profile) else _named_profile(profile)
    names = _select(only)
    skipped = skipped_notebooks(prof, names)
    for name, why in skipped.items():
        log(f"[{prof.name}] {name} skipped: {why}")
    out = Path(output_dir) if output_dir else repo / Path(prof.runs_dir).parent  # runs/<profile>[-<dataset>]
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    papermill_log = logging.getLogger("papermill")
    for name in (n for n in names if n not in skipped):
        source = repo / "notebooks" / f"{name}.ipynb"
        target = out / f"{name}.ipynb"
        log(f"[{prof.name}] {name} ...")
        start = time.perf_counter()
        declared = pm.inspect_notebook(str(source))
        console = _Console(f"[{prof.name}] {name}", len(json.loads(source.read_text())["cells"]) + bool(declared), log)
        papermill_log.addHandler(console)
        level, propagate = papermill_log.level, papermill_log.propagate
        papermill_log.setLevel(logging.INFO)  # its cell records are INFO; they go to the console only
        papermill_log.propagate = False
        try:
            pm.execute_notebook(
                str(source), str(target), parameters=prof.parameters(name, repo, set(declared)),
                cwd=str(repo / "notebooks"), progress_bar=False, kernel_name="python3", log_output=True,
                stdout_file=console, stderr_file=console,
                # The kernel's warning that its local TCP sockets are not encrypted, before every notebook.
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
        except pm.PapermillExecutionError as exc:
            raise NotebookFailed(
                f"{name}.ipynb failed in cell {exc.cell_index} (execution count {exc.exec_count}): "
                f"{exc.ename}: {exc.evalue}\n  executed copy: {target}"
            ) from None
        finally:
            papermill_log.removeHandler(console)
            papermill_log.setLevel(level)
            papermill_log.propagate = propagate
        runs.append(NotebookRun(name, target, time.perf_counter() - start))
        log(f"[{prof.name}] {name} done in {runs[-1].seconds:.1f} s")
        total = write_timings(out / "timings.csv", runs[-1])
        log(f"[{prof.name}] timings.csv: {total:.1f} s over the notebooks timed so far")
    if runs and runs[-1].notebook == NOTEBOOKS[-1]:  # the tables are complete: the results page from them
        from parlab.results_page import write_overview_figure, write_readme_headline, write_results_page

        page = results_page_path(prof, out, repo)
        write_results_page(page, repo / prof.figures_dir, prof.dataset, prof.name, out / "timings.csv", repo)
        log(f"[{prof.name}] results page: {page}")
        if page == repo / "docs" / "results.md":  # the run the README shows: its table and figure too
            if write_readme_headline(repo / "README.md", repo / prof.figures_dir, prof.dataset, page):
                log(f"[{prof.name}] README.md: headline results rewritten")
            if write_overview_figure(repo / prof.figures_dir, prof.dataset, repo / "docs" / "overview.png"):
                log(f"[{prof.name}] docs/overview.png: the README's figure")
    return runs


def results_page_path(profile: Profile, out: Path, repo: Path = REPO) -> Path:
    """Where a run's results page goes: ``docs/results.md`` for the default profile on SynthPA (the page the
    README links to), beside the executed notebooks for every other run."""
    if profile.name == "default" and profile.dataset == "synthpa":
        return repo / "docs" / "results.md"
    return out / "results.md"


def write_timings(path: Path, run: NotebookRun) -> float:
    """Record a notebook's wall time in ``timings.csv`` (notebook,seconds), keeping the other notebooks' rows.

    Returns the sum over the file's rows: after a full run, the profile's wall time.
    """
    import csv

    from parlab.files import write_atomic

    rows = {}
    if path.is_file():
        with open(path, newline="") as fh:
            rows = {r["notebook"]: float(r["seconds"]) for r in csv.DictReader(fh)}
    rows[run.notebook] = round(run.seconds, 1)
    ordered = [(n, rows[n]) for n in NOTEBOOKS if n in rows]
    write_atomic(path, lambda tmp: Path(tmp).write_text(
        "notebook,seconds\n" + "".join(f"{n},{s}\n" for n, s in ordered)))
    return sum(s for _, s in ordered)


def _named_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; known: {', '.join(PROFILES)} (paper: paper_profile())")
    return PROFILES[name]


def _select(only: list[str] | None) -> list[str]:
    """The notebooks ``only`` names (numbers such as "02" or full names), in order; all without it."""
    if not only:
        return list(NOTEBOOKS)
    wanted = {o.strip() for o in only}
    names = [n for n in NOTEBOOKS if n.split("_")[0] in wanted or n in wanted]
    missing = wanted - {n.split("_")[0] for n in names} - set(names)
    if missing:
        raise ConfigError(f"no notebook matches {sorted(missing)}; notebooks: {', '.join(NOTEBOOKS)}")
    return names


def notebook_parameters(profile: Profile, only: list[str] | None = None, repo: Path = REPO) -> dict[str, dict]:
    """What each selected notebook would be run with (``--dry-run``)."""
    import papermill as pm

    return {name: profile.parameters(name, repo, set(pm.inspect_notebook(str(repo / "notebooks" / f"{name}.ipynb"))))
            for name in _select(only)}


def _profile(args: argparse.Namespace) -> Profile:
    if args.profile != "paper":
        defaults = {"device": "cuda", "weights": "pretrained", "clip_weights": "openai", "fusion_weights": "pretrained"}
        given = [f"--{name.replace('_', '-')}" for name in defaults if getattr(args, name) != defaults[name]]
        if given:
            raise ConfigError(f"{', '.join(given)}: only for --profile paper (--set KEY=VALUE sets any notebook "
                              "parameter)")
        if bool(args.dataset) != bool(args.root):
            raise ConfigError("--dataset and --root go together: a dataset name and its folder")
        profile = _named_profile(args.profile)
        if args.dataset:
            profile = on_dataset(profile, args.dataset, args.root)
    else:
        if not args.dataset or not args.root:
            raise ConfigError(f"the paper profile needs --dataset ({', '.join(PAPER_DATASETS)}) and --root (its "
                              "folder)")
        profile = paper_profile(args.dataset, args.root, args.device, args.weights, args.clip_weights,
                                args.fusion_weights, amp="bf16" if args.device.startswith("cuda") else "none")
    return replace(profile, overrides=dict(_setting(item) for item in args.set))


def _check_overrides(profile: Profile, only: list[str] | None) -> None:
    """Refuse a ``--set`` key that no selected notebook declares (a typo would run with the default)."""
    if not profile.overrides:
        return
    import papermill as pm

    declared = set().union(*(pm.inspect_notebook(str(REPO / "notebooks" / f"{n}.ipynb")) for n in _select(only)))
    unknown = sorted(set(profile.overrides) - declared)
    if unknown:
        raise ConfigError(f"--set {', '.join(unknown)}: not a parameter of the selected notebooks")


def _setting(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--set``: the value as JSON (numbers, lists, true), else as a string."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parlab.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", choices=sorted([*PROFILES, "paper"]))
    parser.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,02")
    parser.add_argument("--output", default=None, help="folder for executed notebooks (default runs/<profile>, "
                                                       "runs/<profile>-<dataset> on another dataset)")
    parser.add_argument("--dataset", help="run on this dataset (a name of parlab.data.available_datasets(); the paper "
                                          f"profile: {', '.join(PAPER_DATASETS)})")
    parser.add_argument("--root", help="its folder, as downloaded")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a notebook parameter everywhere it is declared (VALUE as JSON, else a string)")
    parser.add_argument("--dry-run", action="store_true", help="print each notebook's parameters, run nothing")
    paper = parser.add_argument_group("the paper profile (a real dataset)")
    paper.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    paper.add_argument("--weights", default="pretrained",
                       help="ImageNet backbone weights: 'pretrained' (timm's resnet50.tv_in1k, as every public config "
                            "starts from; default), a file or hf-hub:ID; --set weights=none trains from random weights")
    paper.add_argument("--clip-weights", default="openai",
                       help="CLIP ViT-L/14 weights for notebook 05: open_clip's 'openai' tag (default) or a file")
    paper.add_argument("--fusion-weights", default="pretrained",
                       help="the paper's fusion block: 'pretrained' (timm's vit_base_patch16_224.orig_in21k_ft_in1k; "
                            "default), a file or hf-hub:ID")
    args = parser.parse_args(argv)
    only = [o for o in args.only.split(",") if o] or None
    start = time.perf_counter()
    try:
        profile = _profile(args)
        _check_overrides(profile, only)
        if args.dry_run:
            skipped = skipped_notebooks(profile, _select(only))
            for name, parameters in notebook_parameters(profile, only).items():
                print(f"{name}: skipped: {skipped[name]}" if name in skipped else f"{name}: {json.dumps(parameters)}")
                for key, source in profile.sources.get(name, {}).items():
                    if key in parameters:
                        print(f"    {key} = {json.dumps(parameters[key])}  # {source}")
            return 0
        selected = _select(only)
        skipped = skipped_notebooks(profile, selected)
        if only and skipped:  # asked for by name: not skipped in silence
            raise ConfigError("; ".join(f"{name}: {why}" for name, why in skipped.items()))
        check_inputs(profile, [n for n in selected if n not in skipped])
        runs = run_notebooks(profile, only, args.output)
    except NotebookFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ParlabError as exc:  # a bad selection, a missing dataset or weights file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\n{len(runs)} notebooks in {time.perf_counter() - start:.1f} s")
    for r in runs:
        print(f"  {r.notebook:<24} {r.seconds:7.1f} s  {r.output}")
    print(f"figures and tables: {REPO / profile.figures_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
