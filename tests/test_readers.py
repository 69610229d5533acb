import pickle

import numpy as np
import pytest

from parlab.data import DatasetError, available_datasets, load_dataset
from parlab.data.pa100k import EVAL_COLUMNS as PA100K_EVAL
from parlab.data.peta import EVAL_COLUMNS as PETA_EVAL
from parlab.data.rap import RAPV1_EVAL_COLUMNS
from parlab.data.safe_pickle import load_pickle

from conftest import shared_file
from formats import (pickle_as_easydict, rethinking_dict, write_pa100k, write_peta, write_rapv1, write_rapv2)


def test_registry_lists_every_dataset():
    assert {"synthpa", "pa100k", "peta", "rapv1", "rapv2", "petazs", "rapzs", "upar", "wider",
            "rethinking"} <= set(available_datasets())


def test_unknown_dataset_lists_known_ones_and_close_matches():
    with pytest.raises(DatasetError, match="did you mean pa100k.*known datasets: .*peta"):
        load_dataset("pa100", "/tmp")


@pytest.mark.parametrize("layout", ["annotation.mat", "annotation/annotation.mat"])
def test_pa100k_both_layouts_and_eval_order(tmp_path, layout):
    folder = tmp_path / layout.rsplit("/", 1)[0] if "/" in layout else tmp_path
    raw = write_pa100k(folder)
    ann = load_dataset("pa100k", tmp_path)
    assert ann.attributes[:3] == ("Hat", "Glasses", "ShortSleeve") and ann.attributes[-1] == "Back"
    assert np.array_equal(ann.labels, raw[:, list(PA100K_EVAL)])
    assert np.array_equal(ann.raw_labels, raw)
    assert [len(ann.split(s)) for s in ("train", "val", "test", "trainval")] == [8, 2, 2, 10]
    assert ann.image_names[ann.split("test")[0]] == "000011.jpg"
    assert ann.sentences[ann.attributes.index("Female")] == "A female pedestrian"


def test_missing_annotation_file_lists_paths_tried(tmp_path):
    with pytest.raises(DatasetError, match="(?s)tried:.*annotation.mat.*annotation/annotation.mat"):
        load_dataset("pa100k", tmp_path)


def test_peta_partitions_eval_order_and_ids(tmp_path):
    data = write_peta(tmp_path / "PETA.mat")
    ann = load_dataset("peta", tmp_path)
    assert len(ann.partitions) == 2 and ann.num_attributes == 35
    assert ann.attributes[0] == "accessoryHat"  # label column 10 comes first in group order
    assert np.array_equal(ann.labels, data[:, 4:][:, list(PETA_EVAL)])
    assert ann.split("train").tolist() == list(range(10))  # 1-based -> 0-based
    assert ann.image_names[0] == "00001.png"
    other = load_dataset("peta", tmp_path, partition=1)
    assert other.split("test").tolist() == list(range(8))
    assert len(ann.split("trainval")) == 12


def test_rapv1_uncertain_read_as_negative_and_trainval_only(tmp_path):
    label = write_rapv1(tmp_path / "RAP_annotation" / "RAP_annotation.mat")
    ann = load_dataset("rapv1", tmp_path)
    assert ann.num_attributes == 51
    expected = label[:, list(RAPV1_EVAL_COLUMNS)]
    expected[expected == 2] = 0
    assert np.array_equal(ann.labels, expected)
    assert set(ann.splits()) == {"trainval", "test"}
    with pytest.raises(DatasetError, match="no split 'val'"):
        ann.split("val")


def test_rap_label_outside_allowed_values_is_named(tmp_path):
    write_rapv1(tmp_path / "RAP_annotation.mat", bad_value=7)
    with pytest.raises(DatasetError, match=r"RAP_annotation\.label.*label 7.0 at row 3, attribute 'rap5'"):
        load_dataset("rapv1", tmp_path)


def test_rapv2_selected_attributes_and_partitions(tmp_path):
    data = write_rapv2(tmp_path / "RAP_annotation.mat")
    ann = load_dataset("rapv2", tmp_path)
    assert ann.num_attributes == 54 and len(ann.partitions) == 2
    assert np.array_equal(ann.labels, data[:, :54])
    assert [len(ann.split(s)) for s in ("train", "val", "test")] == [9, 3, 3]


def test_rethinking_pickle_without_easydict(tmp_path):
    d = rethinking_dict(partitions=5)
    pickle_as_easydict(d, tmp_path / "dataset_all.pkl")
    ann = load_dataset("rethinking", tmp_path)
    assert len(ann.partitions) == 5
    assert ann.attributes == ("att5", "att4", "att3", "att2", "att1", "att0")
    assert np.array_equal(ann.labels, d["label"][:, ::-1])
    assert ann.split("test").tolist() == [8, 9]


def test_zero_shot_and_upar_pickles(tmp_path):
    pickle_as_easydict(rethinking_dict(), tmp_path / "petazs" / "dataset_zs_run0.pkl")
    assert load_dataset("petazs", tmp_path / "petazs").name == "petazs"
    upar = rethinking_dict(n=12)
    upar["dataset_ids"] = np.array([0] * 4 + [1] * 4 + [2] * 4)
    upar["partition"]["test"] = [[np.array([8, 9]), np.array([10, 11])]]  # per-source lists, partition 0
    upar["partition"] = {k: (v if isinstance(v, list) else [v]) for k, v in upar["partition"].items()}
    pickle_as_easydict(upar, tmp_path / "upar" / "dataset_all.pkl")
    ann = load_dataset("upar", tmp_path / "upar")
    assert ann.groups.tolist() == upar["dataset_ids"].tolist()
    assert ann.split("test").tolist() == [8, 9, 10, 11]
    assert ann.image_root == tmp_path / "upar"


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(DatasetError, match=r"refusing to unpickle global '(posix|os)\.system'"):
        load_pickle(path)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    pickle_as_easydict(rethinking_dict(), tmp_path / "dataset_all.pkl")
    data = (tmp_path / "dataset_all.pkl").read_bytes()
    (tmp_path / "dataset_all.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="dataset_all.pkl: not a readable pickle"):
        load_dataset("rethinking", tmp_path)


def test_wider_text_format(tmp_path):
    ann_dir = tmp_path / "Annotations"
    ann_dir.mkdir()
    (ann_dir / "trainval_name.txt").write_text("a/1.jpg\na/2.jpg\n")
    (ann_dir / "trainval_gt_label.txt").write_text("[1, 0, -1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + " ".join(["-1"] * 14) + "\n")
    (ann_dir / "test_name.txt").write_text("b/1.jpg\n")
    (ann_dir / "test_gt_label.txt").write_text(" ".join(["1"] * 14) + "\n")
    ann = load_dataset("wider", tmp_path)
    assert ann.labels.shape == (3, 14)
    assert ann.labels[0, :3].tolist() == [1, 0, 0]  # 0 and -1 are both negatives
    assert ann.split("test").tolist() == [2]
    (ann_dir / "test_gt_label.txt").write_text("1 1\n")
    with pytest.raises(DatasetError, match="test_gt_label.txt:1: 2 values, expected 14"):
        load_dataset("wider", tmp_path)


@pytest.mark.parametrize("dataset", ["wider", "peta", "rethinking"])
def test_an_annotation_file_that_lists_no_image_is_named(tmp_path, dataset):
    if dataset == "wider":
        (tmp_path / "Annotations").mkdir()
        for name in ("trainval_name.txt", "trainval_gt_label.txt", "test_name.txt", "test_gt_label.txt"):
            (tmp_path / "Annotations" / name).write_text("")
        where = "trainval_name.txt"
    elif dataset == "peta":
        write_peta(tmp_path / "PETA.mat", n=0)
        where = "PETA.mat"
    else:
        d = rethinking_dict(n=0)
        d["label"] = d["label"].reshape(0, 6)
        pickle_as_easydict(d, tmp_path / "dataset_all.pkl")
        where = "dataset_all.pkl"
    with pytest.raises(DatasetError, match=f"{where}: lists no image"):
        load_dataset(dataset, tmp_path)


def test_wrong_label_shape_is_named(tmp_path):
    import scipy.io

    write_pa100k(tmp_path)
    mat = scipy.io.loadmat(tmp_path / "annotation.mat")
    mat["val_label"] = mat["val_label"][:, :20]
    scipy.io.savemat(tmp_path / "annotation.mat", {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(DatasetError, match="'val_label' has 20 columns but 26 attribute names"):
        load_dataset("pa100k", tmp_path)


def test_not_a_mat_file(tmp_path):
    (tmp_path / "annotation.mat").write_text("hello")
    with pytest.raises(DatasetError, match="annotation.mat: not a readable MATLAB file"):
        load_dataset("pa100k", tmp_path)


def test_real_pa100k_file():
    ann = load_dataset("pa100k", shared_file("PA100k/annotation.mat").parent)
    assert ann.labels.shape == (100_000, 26)
    assert [len(ann.split(s)) for s in ("train", "val", "test")] == [80_000, 10_000, 10_000]
    ratios = 100 * ann.positive_ratios("train")
    from parlab.data.pa100k import TRAIN_POSITIVE_PERCENT

    assert np.allclose(ratios, [TRAIN_POSITIVE_PERCENT[a] for a in ann.attributes], atol=0.006)
    assert (ann.labels[:, 19:22].sum(1) == 1).all()  # age one-hot


def test_real_peta_file():
    ann = load_dataset("peta", shared_file("PETA/PETA.mat").parent)
    assert ann.labels.shape == (19_000, 35) and len(ann.raw_attributes) == 105
    assert len(ann.partitions) == 5
    assert [len(ann.split(s)) for s in ("train", "val", "test")] == [9_500, 1_900, 7_600]
    assert ann.attributes[0] == "accessoryHat" and "personalMale" in ann.attributes
    train_ids = set(ann.groups[ann.split("trainval")])
    test_ids = set(ann.groups[ann.split("test")])
    assert 900 < len(train_ids & test_ids) < 1_400  # the identity leak PETAzs removes
