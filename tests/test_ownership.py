"""parlab deletes and overwrites only what it wrote: generated folders carry a marker, a run folder that holds
a run is replaced only when asked, a linked ``.lock`` is never written through, and every delete goes
through :func:`parlab.files.remove_owned`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parlab.data import load_dataset
from parlab.data.image_cache import build_image_cache, cache_folder
from parlab.data.synthpa import generate
from parlab.data.synthpa.corpus import caption_corpus
from parlab.errors import NotOwnedError, ParlabError, RunFolderError
from parlab.files import MARKER, mark_owned, remove_owned
from parlab.runs import prepare_run_folder, run_folder_lock
from parlab.training import BaselineConfig, DataConfig, RunFields, train
from parlab.training.distributed import DistContext

REPO = Path(__file__).resolve().parents[1]
CPU = DistContext(0, 1, 0, torch.device("cpu"))
RUN_NAMES = ("config.json", "log.csv", "best.pt", "metrics.json", "test_per_attribute.csv", "test_predictions.npz",
             "val_predictions.npz")


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (relative path -> bytes, None for a folder)."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def _users_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "sub").mkdir()
    (folder / "sub" / "draft.txt").write_text("also mine")
    return folder


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message
    return message


# --- generated datasets


def test_generating_into_a_users_folder_refuses_and_deletes_nothing(tmp_path):
    root = _users_folder(tmp_path / "ds")
    old, partial = _users_folder(tmp_path / "ds.old"), _users_folder(tmp_path / "ds.partial")
    before = _tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(NotOwnedError) as err:
            generate(root, 12, seed=1, workers=1, overwrite=overwrite)
        assert str(root) in _one_line(err.value) and "remove this one yourself" in str(err.value)
    assert _tree(tmp_path) == before
    # The command line says it in one line and fails.
    done = subprocess.run([sys.executable, "-m", "parlab.data.synthpa", str(root), "--size", "12", "--workers", "1"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {root} ") and len(done.stderr.splitlines()) == 1
    assert _tree(tmp_path) == before
    # A folder that is a file, or a link, is refused as well.
    (tmp_path / "file").write_text("mine")
    (tmp_path / "link").symlink_to(old, target_is_directory=True)
    for target in (tmp_path / "file", tmp_path / "link"):
        with pytest.raises(NotOwnedError, match=str(target)):
            generate(target, 12, seed=1, workers=1)
    assert (tmp_path / "file").read_text() == "mine" and _tree(old) == _tree(partial)


def test_siblings_parlab_did_not_make_are_kept(tmp_path):
    root = generate(tmp_path / "ds", 12, seed=1, workers=1)
    made = _tree(root)
    partial = _users_folder(tmp_path / "ds.partial")
    with pytest.raises(NotOwnedError, match=f"{partial} is in the way"):
        generate(root, 14, seed=1, workers=1)
    shutil.rmtree(partial)
    old = _users_folder(tmp_path / "ds.old")
    with pytest.raises(NotOwnedError, match=f"{old} is in the way"):
        generate(root, 14, seed=1, workers=1)
    assert _tree(old)["notes.txt"] == b"mine" and _tree(root) == made  # the refusal came before any render


def test_a_parlab_synthpa_is_regenerated_and_its_own_leftovers_removed(tmp_path):
    root = generate(tmp_path / "ds", 12, seed=1, workers=1)
    assert json.loads((root / MARKER).read_text())["made_by"] == "parlab"
    for leftover in ("ds.old", "ds.partial"):  # of an interrupted regeneration: marked, so parlab's
        mark_owned(_users_folder(tmp_path / leftover), "SynthPA")
    generate(root, 14, seed=1, workers=1)
    assert len(load_dataset("synthpa", root).labels) == 14
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    stamp = (root / "annotation.mat").stat().st_mtime_ns
    generate(root, 14, seed=1, workers=1, overwrite=True)
    assert (root / "annotation.mat").stat().st_mtime_ns != stamp
    # A SynthPA of a parlab that wrote no marker is known by its synthpa.json.
    (root / MARKER).unlink()
    generate(root, 12, seed=1, workers=1)
    assert len(load_dataset("synthpa", root).labels) == 12 and (root / MARKER).is_file()
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    assert len(load_dataset("synthpa", generate(tmp_path / "empty", 12, seed=1, workers=1)).labels) == 12


def test_the_caption_corpus_and_the_image_cache_refuse_a_users_folder(synthpa_root, tmp_path):
    corpus = _users_folder(tmp_path / "corpus")
    with pytest.raises(NotOwnedError, match=str(corpus)):
        caption_corpus(corpus, 10, 0, (32, 16), workers=1)
    assert _tree(corpus)["notes.txt"] == b"mine"
    ann = load_dataset("synthpa", synthpa_root)
    path = cache_folder(tmp_path / "cache", ann, (32, 16))
    path.parent.mkdir()
    _users_folder(path)
    with pytest.raises(NotOwnedError, match=str(path)):
        build_image_cache(tmp_path / "cache", ann, (32, 16), workers=1, log=lambda _: None)
    shutil.rmtree(path)
    tmp = _users_folder(path.with_name(path.name + f".tmp{os.getpid()}"))
    with pytest.raises(NotOwnedError, match=str(tmp)):
        build_image_cache(tmp_path / "cache", ann, (32, 16), workers=1, log=lambda _: None)
    assert _tree(tmp)["notes.txt"] == b"mine" and not path.exists()


# --- remove_owned


def test_remove_owned_refuses_what_is_outside_its_owner_or_reached_through_a_link(tmp_path):
    owner = tmp_path / "owner"
    owner.mkdir()
    mark_owned(owner, "test")
    outside = _users_folder(tmp_path / "outside")
    (owner / "escape").symlink_to(outside, target_is_directory=True)
    (owner / "file_link").symlink_to(outside / "notes.txt")
    for path in (outside / "notes.txt", owner / ".." / "outside", owner / "escape", owner / "escape" / "notes.txt",
                 owner / "file_link"):
        with pytest.raises(NotOwnedError):
            remove_owned(path, owner)
    unmarked = _users_folder(tmp_path / "unmarked")
    with pytest.raises(NotOwnedError, match="parlab did not make this folder"):
        remove_owned(unmarked / "notes.txt", unmarked)
    assert _tree(outside) == _tree(unmarked)
    # What is parlab's goes, and a missing path is not an error.
    (owner / "made").mkdir()
    (owner / "made" / "x.txt").write_text("x")
    assert remove_owned(owner / "made", owner) and not (owner / "made").exists()
    assert not remove_owned(owner / "never", owner)
    assert remove_owned(owner, owner) and not owner.exists() and _tree(outside)["notes.txt"] == b"mine"


# --- run folders


@pytest.fixture(scope="module")
def finished_run(synthpa_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ownership") / "run"
    train(RunFields(epochs=1, batch_size=16, device="cpu", output_dir=str(out)),
          DataConfig(root=str(synthpa_root), image_size=(64, 32)), BaselineConfig(backbone="test_resnet"),
          progress=False, log=lambda _: None)
    return out


def _configs(synthpa_root: Path, out: Path):
    return (RunFields(epochs=1, batch_size=16, device="cpu", output_dir=str(out)),
            DataConfig(root=str(synthpa_root), image_size=(64, 32)), BaselineConfig(backbone="test_resnet"))


def test_a_finished_run_without_last_pt_is_still_a_run(finished_run, synthpa_root, tmp_path):
    out = Path(shutil.copytree(finished_run, tmp_path / "run"))
    for name in ("last.pt", "previous.pt"):
        (out / name).unlink(missing_ok=True)
    before = _tree(out)
    with pytest.raises(RunFolderError, match="already holds a run") as err:
        train(*_configs(synthpa_root, out), progress=False, log=lambda _: None)
    _one_line(err.value)
    with pytest.raises(RunFolderError, match="the run is finished and its last.pt is gone") as err:
        train(*_configs(synthpa_root, out), existing="resume", progress=False, log=lambda _: None)
    assert "open_run" in _one_line(err.value)
    assert _tree(out) == before
    # best.pt or metrics.json alone is a run too.
    for kept in ("best.pt", "metrics.json"):
        alone = tmp_path / f"only_{kept}"
        alone.mkdir()
        shutil.copy(out / kept, alone / kept)
        for existing in ("error", "resume"):
            with pytest.raises(RunFolderError):
                prepare_run_folder(alone, existing)
    # Asked to, it is replaced.
    (out / "notes.txt").write_text("mine")
    train(*_configs(synthpa_root, out), existing="overwrite", progress=False, log=lambda _: None)
    assert (out / "last.pt").is_file() and (out / "notes.txt").read_text() == "mine"


def test_an_overwrite_refuses_a_link_among_the_run_files_before_deleting_any(finished_run, tmp_path):
    out = Path(shutil.copytree(finished_run, tmp_path / "run"))
    users = tmp_path / "users.csv"
    users.write_text("mine")
    (out / "log.csv").unlink()
    (out / "log.csv").symlink_to(users)
    before = _tree(out)
    with pytest.raises(NotOwnedError, match="log.csv is a symbolic link") as err:
        prepare_run_folder(out, "overwrite")
    assert isinstance(err.value, ParlabError) and _one_line(err.value)
    assert _tree(out) == before and users.read_text() == "mine"


@pytest.mark.parametrize("kind", ["link", "dangling link", "not a lock"])
def test_a_lock_parlab_did_not_write_is_refused_and_left_untouched(synthpa_root, tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "elsewhere.txt"
    if kind == "not a lock":
        (out / ".lock").write_text("a user's notes, not a pid\n")
        target = out / ".lock"
    else:
        if kind == "link":
            target.write_bytes(b"precious bytes\n" * 100)
        (out / ".lock").symlink_to(target)
    before = target.read_bytes() if target.exists() else None
    with pytest.raises(RunFolderError) as err:
        with run_folder_lock(out, CPU):
            pass
    assert str(out / ".lock") in _one_line(err.value)
    with pytest.raises(RunFolderError, match=r"\.lock"):
        train(*_configs(synthpa_root, out), progress=False, log=lambda _: None)
    assert (target.read_bytes() if target.exists() else None) == before
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the run stopped before writing anything


def test_a_lock_of_an_earlier_run_is_reused(tmp_path):
    (tmp_path / ".lock").write_text("123456\n")
    with run_folder_lock(tmp_path, CPU):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
