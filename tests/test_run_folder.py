"""One run per folder: a run locks its folder, and a second run into it stops before touching anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parlab.errors import RunFolderError
from parlab.runs import run_folder_lock
from parlab.training import BaselineConfig, load_checkpoint, train
from parlab.training.config import split_config
from parlab.training.distributed import DistContext

REPO = Path(__file__).resolve().parents[1]
QUIET = {"progress": False, "log": lambda _: None}
CPU = DistContext(0, 1, 0, torch.device("cpu"))


def _train_command(root: Path, out: Path, seed: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "parlab", "train", "--root", str(root), "--backbone", "test_resnet",
            "--image-size", "64", "32", "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--seed", str(seed),
            "--no-progress", "--output-dir", str(out), *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_a_locked_folder_is_refused_with_or_without_overwrite_and_left_untouched(synthpa_root, tmp_path):
    out = tmp_path / "run"
    configs = split_config(BaselineConfig, root=str(synthpa_root), backbone="test_resnet", image_size=(64, 32),
                           epochs=1, batch_size=16, device="cpu", output_dir=str(out))
    train(*configs, **QUIET)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with run_folder_lock(out, CPU):  # this process holds it, as a running run would
        for extra in ((), ("--overwrite",), ("--resume",)):
            done = subprocess.run(_train_command(synthpa_root, out, 1, *extra), capture_output=True, text=True,
                                  cwd=REPO, env=_env(), timeout=120)
            assert done.returncode == 1, done.stderr
            assert done.stderr.strip().splitlines() == [
                f"error: {out} is in use by another run (pid {os.getpid()}); wait for it to end or choose another "
                "output_dir"]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # Released: the folder can be resumed again (a finished run is only re-evaluated).
    assert train(*configs, existing="resume", **QUIET).best_epoch == 1


def test_the_lock_is_the_kernels_and_goes_with_the_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, torch; from pathlib import Path; from parlab.training.distributed import DistContext; "
        "from parlab.runs import run_folder_lock; "
        f"ctx = DistContext(0, 1, 0, torch.device('cpu')); lock = run_folder_lock(Path({str(tmp_path)!r}), ctx); "
        "lock.__enter__(); print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
            with run_folder_lock(tmp_path, CPU):
                pass
    finally:
        holder.kill()  # as kill -9 would: no clean-up runs
        holder.wait()
    with run_folder_lock(tmp_path, CPU):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_two_runs_started_together_into_one_folder_one_wins_and_the_folder_holds_its_run(synthpa_root, tmp_path):
    out = tmp_path / "race"
    runs = [subprocess.Popen(_train_command(synthpa_root, out, seed), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=REPO, env=_env()) for seed in (0, 1)]
    results = [(r.wait(timeout=300), r.stderr.read()) for r in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    winner = next(seed for seed, (code, _) in zip((0, 1), results) if code == 0)
    loser_err = next(err for code, err in results if code == 1)
    assert loser_err.startswith("error: ") and len(loser_err.strip().splitlines()) == 1
    assert "in use by another run" in loser_err or "already holds a run" in loser_err
    # Every file of the folder is the winner's.
    assert json.loads((out / "config.json").read_text())["run"]["seed"] == winner
    for name in ("best.pt", "last.pt", "previous.pt"):
        assert load_checkpoint(out / name)["run"]["seed"] == winner
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
