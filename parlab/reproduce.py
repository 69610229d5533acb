"""Run the ordered notebooks headless with papermill.

``python -m parlab.reproduce --profile {smoke,default} [--only 01,02]`` runs
each notebook of :data:`NOTEBOOKS` with the profile's parameters, writes the
executed copies to ``runs/<profile>/`` and stops at the first failure with a
non-zero exit naming the notebook and the failing cell.

Profiles: ``smoke`` is what the tests run (small SynthPA, minutes in all);
``default`` is what ``make reproduce`` runs (SynthPA default size).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from parlab.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

# Ordered notebooks; later ones plug in here.
NOTEBOOKS: tuple[str, ...] = ("01_data_exploration", "02_label_imbalance", "03_baseline", "04_frdl_goat",
                               "05_promptpar", "06_visualisation", "07_results")



@dataclass(frozen=True)
class Profile:
    """Parameters shared by every notebook of a run."""

    name: str
    synthpa_size: str
    data_root: str  # relative to the repository
    figures_dir: str  # relative to the repository
    runs_dir: str  # relative to the repository: one folder per training run
    training: dict = field(default_factory=dict)  # training parameters, for the notebooks that declare them
    seed: int = 0
    extra: dict[str, dict] = field(default_factory=dict)  # per-notebook overrides

    def parameters(self, notebook: str, repo: Path, declared: set[str]) -> dict:
        """The profile's parameters that the notebook declares (``declared``: its parameter names).

        Every notebook runs headless (no widgets, no progress bars) on the profile's data and runs
        folder; per-notebook ``extra`` values must be parameters of that notebook.
        """
        shared = {
            "dataset": "synthpa",
            "root": str(repo / self.data_root),
            "synthpa_size": self.synthpa_size,
            "figures_dir": str(repo / self.figures_dir),
            "runs_dir": str(repo / self.runs_dir),
            "seed": self.seed,
            "interactive": False,
            "progress": False,
            **self.training,
        }
        extra = self.extra.get(notebook, {})
        unknown = sorted(set(extra) - declared)
        if unknown:
            raise ConfigError(f"profile {self.name!r} sets {', '.join(unknown)}, not parameters of {notebook}")
        return {k: v for k, v in shared.items() if k in declared} | extra


PROFILES: dict[str, Profile] = {
    # Seconds per training run: a tiny timm test network on 800 images.
    "smoke": Profile("smoke", "smoke", "data/synthpa-smoke", "runs/smoke/figures", "runs/smoke/train",
                     training={"backbone": "test_resnet", "epochs": 2, "batch_size": 32, "image_size": [64, 32]},
                     extra={"04_frdl_goat": {"frdl_epochs": 2, "balance_start": 1, "feature_cache": 1,
                                             "seeds": [0, 1]},
                            "05_promptpar": {"clip_epochs": 1, "vis_prompt": 10, "count_large_models": False}}),
    # The notebooks' own defaults (a few minutes per run on a 2-core CPU).
    "default": Profile("default", "default", "data/synthpa", "figures", "runs/default/train"),
}


@dataclass(frozen=True)
class NotebookRun:
    notebook: str
    output: Path
    seconds: float


class NotebookFailed(RuntimeError):
    """A notebook raised; names the notebook and the failing cell."""


def run_notebooks(
    profile: str,
    only: list[str] | None = None,
    output_dir: str | Path | None = None,
    repo: Path = REPO,
    log=print,
) -> list[NotebookRun]:
    """Execute the notebooks of ``profile`` in order; raise :class:`NotebookFailed` on error."""
    import papermill as pm

    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    prof = PROFILES[profile]
    names = list(NOTEBOOKS)
    if only:
        wanted = {o.strip() for o in only}
        names = [n for n in names if n.split("_")[0] in wanted or n in wanted]
        missing = wanted - {n.split("_")[0] for n in names} - set(names)
        if missing:
            raise ConfigError(f"no notebook matches {sorted(missing)}; notebooks: {', '.join(NOTEBOOKS)}")
    out = Path(output_dir) if output_dir else repo / "runs" / profile
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for name in names:
        source = repo / "notebooks" / f"{name}.ipynb"
        target = out / f"{name}.ipynb"
        log(f"[{profile}] {name} ...")
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(source), str(target), parameters=prof.parameters(name, repo, set(pm.inspect_notebook(str(source)))),
                cwd=str(repo / "notebooks"), progress_bar=False, kernel_name="python3",
            )
        except pm.PapermillExecutionError as exc:
            raise NotebookFailed(
                f"{name}.ipynb failed in cell {exc.cell_index} (execution count {exc.exec_count}): "
                f"{exc.ename}: {exc.evalue}\n  executed copy: {target}"
            ) from None
        runs.append(NotebookRun(name, target, time.perf_counter() - start))
        log(f"[{profile}] {name} done in {runs[-1].seconds:.1f} s")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parlab.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", choices=sorted(PROFILES))
    parser.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,02")
    parser.add_argument("--output", default=None, help="folder for executed notebooks (default runs/<profile>)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        runs = run_notebooks(args.profile, [o for o in args.only.split(",") if o] or None, args.output)
    except NotebookFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a bad --only selection
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prof = PROFILES[args.profile]
    print(f"\n{len(runs)} notebooks in {time.perf_counter() - start:.1f} s")
    for r in runs:
        print(f"  {r.notebook:<24} {r.seconds:7.1f} s  {r.output}")
    print(f"figures and tables: {REPO / prof.figures_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
