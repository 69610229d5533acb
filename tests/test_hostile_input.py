"""Hostile or broken input: image names leaving the dataset root, missing images, image bombs and odd
modes, labels outside a format's values, pickles asking for memory, damaged checkpoints, stale
temporary files. Each is refused early, as one line naming the file at fault."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from formats import (
    cellstr,
    pickle_as_easydict,
    rethinking_dict,
    write_pa100k,
    write_peta,
)
from PIL import Image

from parlab.data import DatasetError, load_dataset
from parlab.data.images import PARImageDataset, image_sizes, load_rgb
from parlab.data.safe_pickle import load_pickle
from parlab.files import write_atomic, write_json
from parlab.training.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    save_atomic,
)

REPO = Path(__file__).resolve().parents[1]


def _rewrite_mat(path: Path, **fields) -> None:
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    scipy.io.savemat(path, mat | fields)


def _pa100k_with_name(root: Path, row: int, name: str) -> Path:
    """A PA100k annotation.mat whose train image ``row`` is called ``name``."""
    write_pa100k(root)
    names = [str(n[0]) for n in scipy.io.loadmat(root / "annotation.mat")["train_images_name"].reshape(-1)]
    names[row] = name
    _rewrite_mat(root / "annotation.mat", train_images_name=cellstr(names))
    return root / "annotation.mat"


@pytest.fixture()
def synthpa_copy(synthpa_root, tmp_path) -> Path:
    return Path(shutil.copytree(synthpa_root, tmp_path / "copy"))


# 1. Image names stay inside the dataset root -------------------------------------------------------

@pytest.mark.parametrize("name", ["../secret.jpg", "data/../../secret.jpg", "/etc/passwd", "..\\secret.jpg",
                                  "C:/secret.jpg", ""])
def test_image_names_leaving_the_root_are_refused_when_read(tmp_path, name):
    path = _pa100k_with_name(tmp_path / "ds", 3, name)
    with pytest.raises(DatasetError, match="image name") as err:
        load_dataset("pa100k", tmp_path / "ds")
    message = str(err.value)
    assert message.startswith(f"{path}: ") and f"{name!r} at row 3" in message and "\n" not in message


def test_a_refused_name_touches_no_file_and_tells_nothing_about_it(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    _pa100k_with_name(tmp_path / "ds", 0, "../outside/secret.jpg")  # row 0: also the root probe's name
    touched = []
    real_stat = os.stat

    def spy(path, *args, **kwargs):
        touched.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", spy)
    messages = []
    for present in (False, True):
        if present:
            (outside / "secret.jpg").write_bytes(b"\xff\xd8 not yours")
        with pytest.raises(DatasetError) as err:
            load_dataset("pa100k", tmp_path / "ds")
        messages.append(str(err.value))
    assert messages[0] == messages[1]  # a missing file and an existing one are told apart by nothing
    assert not [p for p in touched if "secret" in p]


def test_rethinking_pickle_names_are_checked_too(tmp_path):
    info = rethinking_dict()
    info["image_name"][4] = "../../x.png"
    pickle_as_easydict(info, tmp_path / "dataset_all.pkl")
    with pytest.raises(DatasetError, match=r"dataset_all.pkl: image name '../../x.png' at row 4 has a '..'"):
        load_dataset("rethinking", tmp_path)


def test_a_symlinked_dataset_root_still_works(synthpa_root, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(synthpa_root, target_is_directory=True)
    ann = load_dataset("synthpa", link)
    x, _, _ = PARImageDataset(ann, "val")[0]
    assert x.shape[0] == 3 and ann.image_root == link / "data"


def test_an_image_file_linking_outside_the_dataset_is_refused_unless_allowed(synthpa_copy, tmp_path):
    from parlab.training.config import DataConfig

    secret = tmp_path / "secret.jpg"
    shutil.copyfile(synthpa_copy / "data" / "000001.jpg", secret)
    ann = load_dataset("synthpa", synthpa_copy)
    row = int(ann.split("test")[3])
    victim = ann.image_path(row)
    victim.unlink()
    victim.symlink_to(secret)
    reads = []
    real_open = Image.open
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "open", lambda path, *a, **k: reads.append(str(path)) or real_open(path, *a, **k))
        for refused in (lambda: PARImageDataset(ann, "test"), lambda: ann.image_path(row),
                        lambda: ann.image_paths(), lambda: DataConfig(root=str(synthpa_copy)).annotations().image_paths()):
            with pytest.raises(DatasetError) as err:
                refused()
            message = str(err.value)
            assert message.startswith(f"{ann.annotation_file}: image '{victim.name}' at row {row} is a link to")
            assert str(secret) in message and "--links-outside" in message and "\n" not in message
    assert not reads  # refused before anything was opened
    inside = synthpa_copy / "data" / "000002.jpg"  # a link that stays inside the image folder is any file
    ann.image_path(row + 1).unlink()
    ann.image_path(row + 1).symlink_to(inside)
    victim.unlink()
    victim.symlink_to(inside)
    assert len(PARImageDataset(ann, "test")) == len(ann.split("test"))
    victim.unlink()
    victim.symlink_to(secret)
    allowed = DataConfig(root=str(synthpa_copy), links_outside=True).annotations()
    x, _, got = PARImageDataset(allowed, "test")[3]
    assert got == row and x.shape[0] == 3
    victim.unlink()
    victim.symlink_to(tmp_path / "gone.jpg")  # a dangling link is a missing image, whatever the option
    assert PARImageDataset(allowed, "test", on_missing="skip").num_skipped == 1


def test_a_pickles_root_elsewhere_is_not_followed(tmp_path):
    info = rethinking_dict()
    for folder in ("ds/data", "ds/crops", "elsewhere"):
        (tmp_path / folder).mkdir(parents=True)
        for name in info["image_name"]:
            Image.new("RGB", (8, 16)).save(tmp_path / folder / name)
    info["root"] = str(tmp_path / "elsewhere")
    pickle_as_easydict(info, tmp_path / "ds" / "dataset_all.pkl")
    with pytest.warns(UserWarning, match="elsewhere is outside the folder of the file and is not followed"):
        ann = load_dataset("rethinking", tmp_path / "ds")
    assert ann.image_root == tmp_path / "ds" / "data"
    for inside in (str(tmp_path / "ds" / "crops"), "crops"):  # under the file's folder, absolute or relative
        info["root"] = inside
        pickle_as_easydict(info, tmp_path / "ds" / "dataset_all.pkl")
        assert load_dataset("rethinking", tmp_path / "ds").image_root == tmp_path / "ds" / "crops"
    info["root"] = "crops/../../elsewhere"
    pickle_as_easydict(info, tmp_path / "ds" / "dataset_all.pkl")
    with pytest.warns(UserWarning, match="not followed"):
        assert load_dataset("rethinking", tmp_path / "ds").image_root == tmp_path / "ds" / "data"


# 2. Missing images are found when a split's images are first needed ---------------------------------

def test_missing_images_are_listed_when_the_dataset_is_built(synthpa_copy):
    ann = load_dataset("synthpa", synthpa_copy)
    victims = ann.image_paths("test")[2:9]
    for v in victims:
        v.unlink()
    with pytest.raises(DatasetError) as err:
        PARImageDataset(ann, "test")
    message = str(err.value)
    assert "7 of 20 images of split 'test' are missing" in message and "(+2 more)" in message
    assert all(v.name in message for v in victims[:5]) and victims[5].name not in message
    assert "\n" not in message
    skipping = PARImageDataset(ann, "test", on_missing="skip")
    assert len(skipping) == 13 and skipping.num_skipped == 7
    victim = ann.image_paths("val")[0]
    ds = PARImageDataset(ann, "val")
    victim.unlink()  # gone after the check: still named when reached
    with pytest.raises(DatasetError, match=f"{victim.name}: image not found"):
        ds[0]


def test_labels_alone_need_no_images(synthpa_copy):
    shutil.rmtree(synthpa_copy / "data")
    ann = load_dataset("synthpa", synthpa_copy)
    assert ann.split_labels("train").shape[1] == 26 and ann.positive_ratios().shape == (26,)


def test_an_empty_split_is_named(synthpa_root):
    ann = load_dataset("synthpa", synthpa_root)
    empty = replace(ann, partitions=[ann.partitions[0] | {"val": np.zeros(0, np.int64)}])
    with pytest.raises(DatasetError, match=r"synthpa \(.*annotation.mat\): split 'val' has no images"):
        PARImageDataset(empty, "val")
    with pytest.raises(DatasetError, match="the rows given has no images"):
        PARImageDataset(ann, np.zeros(0, np.int64))


def test_training_stops_on_a_missing_image_before_its_first_epoch(synthpa_copy, tmp_path):
    from parlab.training import BaselineConfig, train
    from parlab.training.config import split_config

    ann = load_dataset("synthpa", synthpa_copy)
    ann.image_paths("test")[-1].unlink()  # test: the split a run reaches last
    out = tmp_path / "run"
    configs = split_config(BaselineConfig, root=str(synthpa_copy), backbone="test_resnet", image_size=(64, 32),
                           epochs=1, batch_size=16, device="cpu", output_dir=str(out))
    with pytest.raises(DatasetError, match="1 of 20 images of the rows given are missing"):
        train(*configs, progress=False, log=lambda _: None)
    assert not (out / "last.pt").exists() and not (out / "log.csv").exists()


# 3. Image decoding ---------------------------------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` greyscale pixels and holds almost none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_decompression_bombs_are_refused_by_name(tmp_path):
    above_ours = tmp_path / "a.png"  # 72M pixels: over parlab's limit, under PIL's own warning
    above_ours.write_bytes(_png_header(9000, 8000))
    with pytest.raises(DatasetError, match=r"a.png: 9000x8000 image exceeds the limit of \d+ pixels"):
        load_rgb(above_ours)
    above_pil = tmp_path / "b.png"  # 900M pixels: PIL's own DecompressionBombError
    above_pil.write_bytes(_png_header(30000, 30000))
    for call in (load_rgb, lambda p: image_sizes(_one_image_annotations(p))):
        with pytest.raises(DatasetError, match="b.png: .*decompression bomb"):
            call(above_pil)


def _one_image_annotations(path: Path):
    from parlab.data.annotations import Annotations

    return Annotations.from_raw("one", path, path.parent, [path.name], np.zeros((1, 1), np.int8), ["a"], [0],
                                [{"test": np.array([0])}])


def test_the_pixel_limit_is_a_setting(tmp_path, monkeypatch):
    from parlab.data import images

    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    assert load_rgb(tmp_path / "x.png").size == (40, 30)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DatasetError, match="x.png: 40x30 image exceeds the limit of 1000 pixels"):
        load_rgb(tmp_path / "x.png")
    assert Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > 10**7  # PIL's global untouched


def test_truncated_and_non_images_are_named(tmp_path):
    Image.new("RGB", (64, 128), (10, 200, 30)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "x.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="x.png: unreadable or truncated image"):
        load_rgb(tmp_path / "x.png")
    (tmp_path / "n.jpg").write_text("not an image")
    with pytest.raises(DatasetError, match="n.jpg: unreadable or truncated image"):
        load_rgb(tmp_path / "n.jpg")
    with pytest.raises(DatasetError, match="n.jpg: unreadable"):  # header-only reading too
        image_sizes(_one_image_annotations(tmp_path / "n.jpg"))


def test_images_in_a_mode_without_rgb_meaning_are_refused(tmp_path):
    Image.new("F", (4, 4), 0.5).save(tmp_path / "f.tif")
    with pytest.raises(DatasetError, match="f.tif: unsupported image mode 'F'"):
        load_rgb(tmp_path / "f.tif")


@pytest.mark.parametrize("kind", ["png", "tif-big-endian", "tif-int32"])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path, kind):
    values = np.array([[0, 257 * 100, 65535, 129, 128, 257 * 37 + 100]], dtype=np.uint16)
    path = tmp_path / ("x.png" if kind == "png" else "x.tif")
    if kind == "png":
        Image.fromarray(values).save(path)  # a 16-bit PNG ("I;16", or "I" in older PIL)
    elif kind == "tif-big-endian":
        Image.frombytes("I;16B", (values.shape[1], 1), values.astype(">u2").tobytes()).save(path)
    else:
        Image.fromarray(values.astype(np.int32)).save(path)  # mode "I"
    assert Image.open(path).mode in ("I;16", "I;16B", "I")
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (1, 6, 3) and (rgb == rgb[..., :1]).all()
    assert rgb[0, :, 0].tolist() == [0, 100, 255, 1, 0, 37]


# 4. Label values outside a format's set --------------------------------------------------------------

def test_a_2_in_pa100k_is_an_error_naming_file_field_and_value(tmp_path):
    raw = write_pa100k(tmp_path)
    val = raw[8:10].copy()
    val[1, 3] = 2
    _rewrite_mat(tmp_path / "annotation.mat", val_label=val)
    with pytest.raises(DatasetError, match=r"annotation.mat: field 'val_label' has label 2 at row 1, "
                                           r"attribute 'AgeLess18'; labels must be in \{-1, 0, 1\}"):
        load_dataset("pa100k", tmp_path)
    info = rethinking_dict()  # the same dataset as Rethinking_of_PAR's pickle
    info["label"][2, 1] = 2
    pickle_as_easydict(info, tmp_path / "pkl" / "dataset_all.pkl")
    with pytest.raises(DatasetError, match=r"dataset_all.pkl: field 'label' has label 2 at row 2"):
        load_dataset("pa100k", tmp_path / "pkl")
    assert load_dataset("rethinking", tmp_path / "pkl").raw_labels[2, 1] == 2  # any format: RAP's may have 2


def test_a_2_in_peta_or_wider_is_an_error(tmp_path):
    data = write_peta(tmp_path / "peta" / "PETA.mat")
    data[5, 4 + 7] = 2
    peta = scipy.io.loadmat(tmp_path / "peta" / "PETA.mat")["peta"]
    peta["data"][0, 0] = data
    scipy.io.savemat(tmp_path / "peta" / "PETA.mat", {"peta": peta})
    with pytest.raises(DatasetError, match="PETA.mat: field 'peta.data' has label 2 at row 5"):
        load_dataset("peta", tmp_path / "peta")
    ann_dir = tmp_path / "wider" / "Annotations"
    ann_dir.mkdir(parents=True)
    (ann_dir / "trainval_name.txt").write_text("a/1.jpg\n")
    (ann_dir / "test_name.txt").write_text("b/1.jpg\n")
    (ann_dir / "test_gt_label.txt").write_text(" ".join(["1"] * 14) + "\n")
    for bad in ("2", "0.5"):
        (ann_dir / "trainval_gt_label.txt").write_text(" ".join(["1"] * 13 + [bad]) + "\n")
        with pytest.raises(DatasetError, match=f"trainval_gt_label.txt: field 'labels' has label {bad}"):
            load_dataset("wider", tmp_path / "wider")


# 5. Pickles asking for memory ------------------------------------------------------------------------

def _load_pickle_limited(path: Path, check: str = "", memory: int = 2 << 30,
                         timeout: float = 120) -> subprocess.CompletedProcess:
    """load_pickle(path) in a child limited to ``memory`` bytes, so that a regression fails the test
    instead of exhausting the machine; prints the refusal, or evaluates ``check`` on the result."""
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
        from parlab.data.safe_pickle import load_pickle
        from parlab.data.errors import DatasetError
        try:
            got = load_pickle({str(path)!r})
        except DatasetError as exc:
            print(exc)
        else:
            print("loaded", {check or "''"})
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}, check=False)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_tiny_pickle_asking_for_a_huge_bytearray_is_refused_by_name(tmp_path, protocol):
    # bytearray(8 * 10**9): GLOBAL, LONG1 8000000000, TUPLE1, REDUCE, STOP (protocol 4: in one frame)
    body = b"cbuiltins\nbytearray\n\x8a\x05\x00\x50\xd6\xdc\x01\x85R."
    frame = b"" if protocol == 2 else b"\x95" + struct.pack("<Q", len(body))
    path = tmp_path / "bomb.pkl"
    path.write_bytes(bytes([0x80, protocol]) + frame + body)
    assert len(path.read_bytes()) <= 41
    start = time.perf_counter()
    done = _load_pickle_limited(path)
    assert "refusing builtins.bytearray(8000000000)" in done.stdout, done.stdout + done.stderr
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("payload", [
    b"\x80\x02cbuiltins\nlist\ncbuiltins\nrange\n\x8a\x05\x00\xe4\x0bT\x02\x85R\x85R.",  # list(range(10**10))
    b"\x80\x02cnumpy\nndarray\n\x8a\x05\x00\xe4\x0bT\x02\x85\x85R.",  # numpy.ndarray((10**10,))
    b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05\x00\xe4\x0bT\x02\x85C\x01b\x87R.",
    b"\x80\x02cnumpy._core.multiarray\nscalar\ncnumpy\ndtype\nX\x0a\x00\x00\x00U500000000\x85R\x85R.",
])
def test_other_size_taking_constructors_are_refused(tmp_path, payload):
    (tmp_path / "p.pkl").write_bytes(payload)
    done = _load_pickle_limited(tmp_path / "p.pkl")
    assert done.stdout.startswith(f"{tmp_path / 'p.pkl'}: refusing "), done.stdout + done.stderr


def test_real_pickles_still_load(tmp_path):
    obj = {"a": np.arange(3), "o": np.array([np.arange(2), "x"], dtype=object), "s": {1, 2},
           "b": bytearray(b"ab"), "r": range(26), "f": np.float32(1.5), "e": np.zeros((0, 6)), "y": b""}
    for protocol in (2, 3, 4, 5):  # protocol 2 names the builtins __builtin__ (and pickles b"" as bytes())
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))
        got = load_pickle(tmp_path / "ok.pkl")
        assert type(got["a"]) is np.ndarray and got["a"].tolist() == [0, 1, 2]
        assert type(got["o"][0]) is np.ndarray and got["s"] == {1, 2} and got["b"] == b"ab"
        assert got["e"].shape == (0, 6) and got["y"] == b"" and got["r"] == range(26)


def test_python2_names_of_builtins_are_held_to_the_same_rules(tmp_path):
    for payload, refused in [(b"\x80\x02c__builtin__\nbytes\nJ\x00\xe1\xf5\x05\x85R.", "builtins.bytes(100000000)"),
                             (b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.", "'builtins.eval'")]:
        (tmp_path / "p.pkl").write_bytes(payload)
        with pytest.raises(DatasetError, match=re.escape(refused)):
            load_pickle(tmp_path / "p.pkl")


def test_shared_sublists_are_not_copied_exponentially(tmp_path):
    deep: list = [0]
    for _ in range(60):
        deep = [deep, deep]  # pickled once per level, 2**60 leaves when copied
    (tmp_path / "d.pkl").write_bytes(pickle.dumps({"x": deep}, protocol=4))
    done = _load_pickle_limited(tmp_path / "d.pkl", check='got["x"][0] is got["x"][1]', timeout=60)
    assert done.stdout.strip() == "loaded True", done.stdout + done.stderr


def test_an_object_array_with_a_short_list_does_not_crash_the_process(tmp_path):
    # numpy 2.4 segfaults on setstate of an object array whose list is shorter than its shape.
    data = pickle.dumps(np.array([1, "x", 3], dtype=object), protocol=2)
    assert data.count(b"K\x01K\x03\x85") == 1
    (tmp_path / "o.pkl").write_bytes(data.replace(b"K\x01K\x03\x85", b"K\x01K\x40\x85"))
    done = _load_pickle_limited(tmp_path / "o.pkl")
    assert done.returncode == 0 and "not a readable pickle" in done.stdout, done.stdout + done.stderr


# 6. Compressed annotation files asking for memory ----------------------------------------------------

def _append_compressed_zeros(path: Path, count: int) -> None:
    """Append to MAT-file ``path`` a variable of ``count`` float64 zeros, zlib-compressed (about 1/1000 of it).

    Written element by element (MAT-file format v5), streamed, so that the test itself never holds it.
    """
    name = b"bomb"
    body = (struct.pack("<IIII", 6, 8, 6, 0)  # array flags: mxDOUBLE_CLASS
            + struct.pack("<IIii", 5, 8, count, 1)  # dimensions: count x 1
            + struct.pack("<HH", 1, len(name)) + name  # the name, in the small element format
            + struct.pack("<II", 9, count * 8))  # the real part: miDOUBLE, count * 8 bytes
    deflater = zlib.compressobj(9)
    parts = [deflater.compress(struct.pack("<II", 14, len(body) - 8 + count * 8) + body)]
    chunk, left = bytes(8 << 20), count * 8
    while left:
        parts.append(deflater.compress(chunk[:min(left, len(chunk))]))
        left -= min(left, len(chunk))
    compressed = b"".join(parts) + deflater.flush()
    with open(path, "ab") as f:
        f.write(struct.pack("<II", 15, len(compressed)) + compressed)


def _peak_reading(root: Path, ceiling: int) -> tuple[int, str]:
    """(peak resident KiB, outcome) of reading PA100k ``root`` in a child whose MAX_INFLATED_BYTES is ``ceiling``."""
    code = textwrap.dedent(f"""
        import resource
        import parlab.data.matfile as matfile
        from parlab.data import DatasetError, load_dataset
        matfile.MAX_INFLATED_BYTES = {ceiling}
        try:
            outcome = "read %d images" % len(load_dataset("pa100k", {str(root)!r}).image_names)
        except DatasetError as exc:
            outcome = str(exc)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        print(outcome)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    peak, outcome = done.stdout.splitlines()[-2:]
    return int(peak), outcome


def test_a_compressed_annotation_inflating_beyond_the_ceiling_is_refused_without_using_it(tmp_path):
    write_pa100k(tmp_path / "normal")
    shutil.copytree(tmp_path / "normal", tmp_path / "bomb")
    _append_compressed_zeros(tmp_path / "bomb" / "annotation.mat", 64 << 20)  # 512 MiB inflated, 0.5 MiB on disk
    assert (tmp_path / "bomb" / "annotation.mat").stat().st_size < 2 << 20
    ceiling = 16 << 20
    normal_peak, normal = _peak_reading(tmp_path / "normal", ceiling)
    bomb_peak, refused = _peak_reading(tmp_path / "bomb", ceiling)
    assert normal == "read 12 images"
    assert refused == (f"{tmp_path / 'bomb' / 'annotation.mat'}: holds more than {ceiling} bytes once inflated, far "
                       "more than any PAR annotation (parlab.data.matfile.MAX_INFLATED_BYTES); refused as a possible "
                       "decompression bomb")
    assert bomb_peak < 1.5 * normal_peak, (bomb_peak, normal_peak)
    # Under the default ceiling the same file is read: the extra variable is only memory, not an error.
    _, read = _peak_reading(tmp_path / "bomb", 1 << 30)
    assert read == "read 12 images"


def test_the_inflated_size_is_what_the_variables_hold(tmp_path):
    from parlab.data.matfile import inflated_size

    values = {"a": np.arange(1000.0), "names": cellstr([f"{i:06d}.jpg" for i in range(50)])}
    scipy.io.savemat(tmp_path / "plain.mat", values, do_compression=False)
    scipy.io.savemat(tmp_path / "zipped.mat", values, do_compression=True)
    plain = (tmp_path / "plain.mat").stat().st_size - 128  # the header, then the elements as they are
    assert inflated_size(tmp_path / "plain.mat", 1 << 30) == plain
    assert inflated_size(tmp_path / "zipped.mat", 1 << 30) == plain
    assert inflated_size(tmp_path / "zipped.mat", 100) <= plain  # stops counting soon after the limit


# 7. Checkpoints and temporary files -----------------------------------------------------------------

def _run_folder(tmp_path: Path) -> Path:
    save_atomic({"format": FORMAT, "epoch": 1}, tmp_path / "last.pt", keep_previous=True)
    save_atomic({"format": FORMAT, "epoch": 2}, tmp_path / "last.pt", keep_previous=True)
    save_atomic({"format": FORMAT, "epoch": 2}, tmp_path / "best.pt")
    return tmp_path


def test_random_bytes_are_a_damaged_checkpoint_not_code(tmp_path):
    folder = _run_folder(tmp_path)
    rng = np.random.default_rng(0)
    for name, head in (("best.pt", b""), ("last.pt", b""), ("best.pt", b"PK\x03\x04")):
        (folder / name).write_bytes(head + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(folder / name)
        message = str(err.value)
        assert message.startswith(f"{folder / name}: truncated or damaged checkpoint, or not a parlab checkpoint")
        assert "run code" not in message and "\n" not in message
        assert ("previous.pt" in message) == (name == "last.pt")


def test_a_damaged_best_checkpoint_does_not_point_to_previous(tmp_path):
    folder = _run_folder(tmp_path)
    data = (folder / "best.pt").read_bytes()
    (folder / "best.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="best.pt: truncated or damaged") as err:
        load_checkpoint(folder / "best.pt")
    assert "previous" not in str(err.value)


def test_code_in_a_checkpoint_is_still_called_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"format": FORMAT, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(tmp_path / "evil.pt")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_write_leaves_a_recognisable_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "metrics.json"
    code = textwrap.dedent(f"""
        import os, signal
        from parlab.files import write_atomic

        def write(tmp):
            open(tmp, "w").write('{{"half": ')
            os.kill(os.getpid(), signal.SIGKILL)

        write_atomic({str(target)!r}, write)
    """)
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
                            check=False)
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".metrics.json.tmp-") and left[0].endswith(".json")
    living = tmp_path / f".metrics.json.tmp-{os.getpid()}-abcdefgh.json"  # a write of a running process
    living.write_text("{}")
    other = tmp_path / f".log.csv.tmp-{_dead_pid()}-abcdefgh.csv"  # another target's
    other.write_text("")
    write_json(target, {"ok": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["metrics.json", living.name, other.name])
    write_atomic(tmp_path / "log.csv", lambda tmp: Path(tmp).write_text("a\n"))
    assert not other.exists() and living.exists()


# 8. A full disk --------------------------------------------------------------------------------------

@pytest.fixture()
def small_disk(tmp_path):
    """A 512 KiB tmpfs: a real full disk (root only; skipped where mounting is not allowed)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("mounting a small tmpfs needs root in a namespace that allows mounts")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)  # lazy: a mapping the collector has yet to free


def test_a_write_that_runs_out_of_space_says_so_and_keeps_the_file(tmp_path):
    from parlab.errors import DiskFullError, error_line
    from parlab.files import write_atomic

    target = tmp_path / "metrics.json"
    write_json(target, {"epoch": 1})

    def no_space(tmp):
        Path(tmp).write_text('{"epoch": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(DiskFullError) as err:
        write_atomic(target, no_space)
    assert error_line(err.value) == (f"no space left on the device of {tmp_path}; {target} is intact (files are "
                                     "replaced only once written whole)")
    assert isinstance(err.value, OSError) and err.value.errno == 28
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"] and "epoch" in target.read_text()

    def other_failure(tmp):
        raise ValueError("not about space")

    with pytest.raises(ValueError, match="not about space"):  # with free space, other failures are themselves
        write_atomic(target, other_failure)


def test_a_checkpoint_on_a_full_disk_keeps_the_last_one(small_disk):
    from parlab.errors import DiskFullError

    save_atomic({"format": FORMAT, "epoch": 1}, small_disk / "last.pt")
    with pytest.raises(DiskFullError, match=f"no space left on the device of {small_disk}; {small_disk}/last.pt is "
                                            "intact"):
        save_atomic({"format": FORMAT, "epoch": 2, "w": torch.zeros(1 << 18)}, small_disk / "last.pt")
    assert load_checkpoint(small_disk / "last.pt")["epoch"] == 1
    assert [p.name for p in small_disk.iterdir()] == ["last.pt"]


def test_training_onto_a_full_disk_is_one_line(synthpa_root, small_disk, capsys):
    from parlab.cli import main

    argv = ["train", "--root", str(synthpa_root), "--backbone", "test_resnet", "--image-size", "64", "32",
            "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--output-dir", str(small_disk / "run"),
            "--no-progress", "--train-limit", "64"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left on the device of {small_disk / 'run'}; ") and err.count("\n") == 1
    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [f for f in held if f.startswith(str(small_disk))]  # the lock and the log are closed


# 9. Damaged weight files ---------------------------------------------------------------------------------

def _damaged_weights(tmp_path: Path, good: dict) -> dict[str, Path]:
    """Files that are not ``good``'s weights: random bytes (several seeds: the unpickler fails in many ways),
    a truncated archive, another model's archive, random bytes named .safetensors, a truncated safetensors."""
    from safetensors.torch import save_file

    files = {}
    for seed in range(4):
        files[f"random{seed}"] = tmp_path / f"random{seed}.pt"
        files[f"random{seed}"].write_bytes(np.random.default_rng(seed).integers(0, 256, 5000, np.uint8).tobytes())
    torch.save(good, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["another"] = tmp_path / "another.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, files["another"])
    files["random.safetensors"] = tmp_path / "random.safetensors"
    files["random.safetensors"].write_bytes(files["random0"].read_bytes())
    save_file({k: v.contiguous() for k, v in good.items()}, tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    files["truncated.safetensors"] = tmp_path / "truncated.safetensors"
    files["truncated.safetensors"].write_bytes(data[: len(data) // 2])
    return files


def _clip(path=None):
    from parlab.models import create_clip

    return create_clip("parlab-clip-tiny", path)


def _backbone(path=None):
    from parlab.models.backbones import create_backbone

    return create_backbone("test_resnet", path)


@pytest.mark.filterwarnings("ignore:parlab-clip-tiny. random weights")
@pytest.mark.parametrize("build, named", [(_clip, "CLIP 'parlab-clip-tiny'"), (_backbone, "'test_resnet'")])
def test_damaged_weights_are_one_line_naming_the_file(tmp_path, build, named):
    from parlab.errors import ParlabError

    for kind, path in _damaged_weights(tmp_path, build().state_dict()).items():
        with pytest.raises(ParlabError) as err:
            build(path)
        message = str(err.value)
        assert message.startswith(f"{path}: cannot load as weights of {named}"), kind
        assert "\n" not in message and "weights_only=False" not in message, kind
    assert build(tmp_path / "good.pt") is not None
