"""Tests for fedlottery.data: parsers on tiny synthetic files, root resolution, splits.

Everything runs offline on files built in tmp_path; the only tests that touch the real data in
../shared/data are skipped when it is absent and read MNIST only (fast).
"""

from __future__ import annotations

import gzip
import io
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fedlottery.data import (
    DATASETS,
    DataNotFoundError,
    Dataset,
    PixelScale,
    load_dataset,
    resolve_data_root,
    train_val_split,
)
from fedlottery.data import cifar, idx
from fedlottery.data import datasets as ds

REAL_ROOT = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAVE_REAL_MNIST = (REAL_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path):
    """No test sees the developer's data env var, writes to ~/.cache, or leaks the in-process cache."""
    monkeypatch.delenv("FEDLOTTERY_DATA", raising=False)
    monkeypatch.setenv("FEDLOTTERY_CACHE", str(tmp_path / "cache"))
    ds._load_cached.cache_clear()
    ds._load_hf_cached.cache_clear()
    yield
    ds._load_cached.cache_clear()
    ds._load_hf_cached.cache_clear()


# --------------------------------------------------------------------------------------------
# builders for tiny synthetic files
# --------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise a uint8 array in idx format (magic 0x0800 | ndim, big-endian dims)."""
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_idx(path: pathlib.Path, arr: np.ndarray, gz: bool = True) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_set(root: pathlib.Path, folder: str = "MNIST", gz: bool = True, n_train: int = 12, n_test: int = 5):
    """A tiny MNIST-layout set with 6x5 images; returns the raw arrays for comparison."""
    rng = np.random.default_rng(1)
    raw = root / folder / "raw"
    arrays = {
        "x_train": rng.integers(0, 256, size=(n_train, 6, 5), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 6, 5), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, stem in idx._IDX_FILES.items():
        write_idx(raw / stem, arrays[key], gz=gz)
    return arrays


def colour(label: int, index: int, split: str) -> tuple[int, int, int]:
    """A flat colour that encodes (split, class, index), robust to JPEG rounding."""
    return (40 + 20 * label, 40 + 40 * index, 60 if split == "train" else 200)


def jpeg_bytes(rgb: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def make_cifar_zip(root: pathlib.Path, classes=(0, 3, 9), per_class: dict[str, int] | None = None) -> pathlib.Path:
    """A tiny cifar10-jpeg.zip; members are written in a scrambled order to test the sorting."""
    per_class = per_class or {"train": 3, "test": 2}
    members = []
    for split, n in per_class.items():
        for label in classes:
            for i in range(n):
                name = f"cifar10-jpeg/{split}/{cifar.CIFAR10_CLASSES[label]}/{i:04d}.jpg"
                members.append((name, jpeg_bytes(colour(label, i, split))))
    members.reverse()
    path = root / "cifar10-jpeg.zip"
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        zf.writestr("cifar10-jpeg/README.txt", "ignored")
    return path


def make_cifar_batches(root: pathlib.Path, n_per_batch: int = 2, protocol: int = 2) -> dict[str, np.ndarray]:
    """The six python-format batches with known pixel values."""
    batch_dir = root / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    rng = np.random.default_rng(2)
    xs, ys = [], []
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        with open(batch_dir / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, fh, protocol=protocol)
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.array(labels))
    return {
        "x_train": np.concatenate(xs[:5]),
        "y_train": np.concatenate(ys[:5]),
        "x_test": xs[5],
        "y_test": ys[5],
    }


def cifar_normalise(x_uint8: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(cifar._CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cifar._CIFAR_STD).view(1, 3, 1, 1)
    return (torch.from_numpy(x_uint8).float() / 255 - mean) / std


# --------------------------------------------------------------------------------------------
# Dataset record and names
# --------------------------------------------------------------------------------------------


def test_public_names():
    from fedlottery.data import DataCorruptError
    from fedlottery.errors import UserError

    assert DATASETS == ("digits", "mnist", "fashion_mnist", "cifar10", "hf")
    assert issubclass(DataNotFoundError, FileNotFoundError)
    # The command line reports every UserError in one line (exit 2); ValueError keeps older callers working.
    assert issubclass(DataNotFoundError, UserError)
    assert issubclass(DataCorruptError, UserError) and issubclass(DataCorruptError, ValueError)


def test_check_data_config_names_the_key():
    from fedlottery.config import ConfigError, DataConfig
    from fedlottery.data import check_data_config

    check_data_config(DataConfig(dataset="mnist"))
    with pytest.raises(ConfigError, match=r"^data\.dataset: unknown data set 'imagenet'; choose one of digits"):
        check_data_config(DataConfig(dataset="imagenet"))


def test_unknown_name_lists_datasets():
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(err.value)


def test_dataset_record_validates_and_reports_shape():
    x = torch.zeros(4, 3, 5, 6)
    y = torch.tensor([0, 1, 2, 1])
    d = Dataset("toy", x, y, x[:2], y[:2], num_classes=3)
    assert d.input_shape == (3, 5, 6)
    assert "toy" in repr(d) and "tensor" not in repr(d)
    with pytest.raises(ValueError):
        Dataset("toy", x.double(), y, x, y, num_classes=3)
    with pytest.raises(ValueError):
        Dataset("toy", x, y.int(), x, y, num_classes=3)
    with pytest.raises(ValueError):
        Dataset("toy", x, y, x, y, num_classes=2)  # label 2 out of range
    with pytest.raises(ValueError):
        Dataset("toy", x, y[:3], x, y, num_classes=3)
    with pytest.raises(AttributeError):
        d.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_loads_without_root_and_is_stable():
    d = load_dataset("digits")
    assert d.name == "digits" and d.num_classes == 10 and d.input_shape == (1, 8, 8)
    assert d.x_train.shape == (1797 - 360, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-4
    # stratified: every class's test share is within one image of the exact proportion
    all_counts = torch.bincount(torch.cat([d.y_train, d.y_test]), minlength=10).double()
    test_counts = torch.bincount(d.y_test, minlength=10).double()
    assert torch.all((test_counts - all_counts * 360 / 1797).abs() < 1)
    # cached in-process, and identical after a fresh load (split does not depend on any run seed)
    assert load_dataset("digits") is d
    torch.manual_seed(123)
    ds._load_cached.cache_clear()
    again = load_dataset("digits")
    assert again is not d
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_test, d.y_test)
    assert torch.equal(again.x_train, d.x_train)


def test_digits_are_read_from_sklearns_file_without_importing_sklearn():
    """The shipped CSV gives exactly sklearn's arrays, and loading digits leaves sklearn unimported (its import
    is 1.3-2 s of every run's start, in the driver and in each client actor)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sklearn_digits

    from fedlottery.data.digits import digits_arrays

    pixels, labels = digits_arrays()
    bunch = sklearn_digits()
    assert np.array_equal(pixels, bunch.data) and np.array_equal(labels, bunch.target)
    probe = ("import sys; from fedlottery.data import load_dataset; load_dataset('digits'); "
             "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_digits_ignores_root(tmp_path):
    assert load_dataset("digits", root=tmp_path / "nowhere").x_test.shape[0] == 360


# --------------------------------------------------------------------------------------------
# MNIST-style idx files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "folder", "gz"), [("mnist", "MNIST", True), ("fashion_mnist", "FashionMNIST", False)])
def test_idx_set_parses_and_normalises(tmp_path, name, folder, gz):
    arrays = make_idx_set(tmp_path, folder=folder, gz=gz)
    d = load_dataset(name, root=tmp_path)
    _, mean, std = idx.IDX_SETS[name]
    assert d.name == name and d.num_classes == 10 and d.input_shape == (1, 6, 5)
    assert d.x_train.shape == (12, 1, 6, 5) and d.x_test.shape == (5, 1, 6, 5)
    expected = (torch.from_numpy(arrays["x_train"]).float() / 255 - mean) / std
    torch.testing.assert_close(d.inputs("train")[:, 0], expected)
    assert d.y_train.tolist() == arrays["y_train"].tolist()
    assert d.y_test.dtype == torch.int64 and d.y_test.tolist() == arrays["y_test"].tolist()
    assert load_dataset(name, root=tmp_path) is d  # in-process cache keyed by (name, root)


def test_idx_usual_constants():
    assert idx.IDX_SETS["mnist"][1:] == (0.1307, 0.3081)
    assert idx.IDX_SETS["fashion_mnist"][1:] == (0.2860, 0.3530)


def test_idx_missing_file_lists_paths(tmp_path):
    make_idx_set(tmp_path)
    missing = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    missing.unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = str(err.value)
    assert str(missing) in msg and str(missing.with_suffix("")) in msg
    assert "mnist" in msg and "FEDLOTTERY_DATA" in msg


@pytest.mark.parametrize(
    "damage",
    ["magic", "truncated", "extra", "short", "not_gzip", "count_mismatch"],
)
def test_corrupt_idx_raises_value_error(tmp_path, damage):
    make_idx_set(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    target = raw / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(target.read_bytes())
    if damage == "magic":
        data = (2049).to_bytes(4, "big") + data[4:]
    elif damage == "truncated":
        data = data[:-7]
    elif damage == "extra":
        data = data + b"\x00"
    elif damage == "short":
        data = data[:5]
    if damage == "not_gzip":
        target.write_bytes(b"definitely not gzip data")
    elif damage == "count_mismatch":
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))
    else:
        target.write_bytes(gzip.compress(data))
    with pytest.raises(ds.DataCorruptError, match="fix: replace it with an intact copy"):
        load_dataset("mnist", root=tmp_path)


def test_truncated_gzip_is_a_data_corrupt_error(tmp_path):
    make_idx_set(tmp_path)
    target = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-10])  # cut inside the gzip stream
    with pytest.raises(ds.DataCorruptError, match=r"corrupt idx file .*train-labels-idx1-ubyte\.gz: cannot decompress"):
        load_dataset("mnist", root=tmp_path)


def test_read_idx_checks_label_magic(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros((3, 2), dtype=np.uint8), gz=False)  # 2-D: magic 2050
    with pytest.raises(ValueError, match="magic"):
        idx._read_idx(path, 2049)
    ok = write_idx(tmp_path / "labels1", np.arange(4, dtype=np.uint8), gz=False)
    assert idx._read_idx(ok, 2049).tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_pixels_normalised_when_read_hold_the_bits_of_the_whole_set_normalised_once(name, tmp_path):
    """The uint8 storage changes no input: any subset read later equals, bit for bit, the same images cut from
    the set normalised once as a whole (what the loaders stored before). Real MNIST; CIFAR-10's batch format."""
    if name == "mnist" and not HAVE_REAL_MNIST:
        pytest.skip("real MNIST files not present at ../shared/data")
    root = REAL_ROOT if name == "mnist" else tmp_path
    if name == "cifar10":
        make_cifar_batches(tmp_path, n_per_batch=200)
    d = load_dataset(name, root=root)
    assert d.x_train.dtype == torch.uint8 and d.pixels is not None
    whole = d.x_train.to(torch.float32)
    whole.div_(255.0).sub_(d.pixels.mean).div_(d.pixels.std)
    idx = torch.randperm(len(d.y_train), generator=torch.Generator().manual_seed(0))[:777]
    subset = d.inputs("train", idx)
    assert subset.dtype == torch.float32 and subset.shape == (len(idx), *d.input_shape)
    assert torch.equal(subset.view(torch.int32), whole[idx].view(torch.int32))
    assert torch.equal(d.inputs("train")[idx], subset)


def test_float_datasets_are_read_as_stored_and_pixels_must_be_uint8():
    d = load_dataset("digits")
    assert d.pixels is None and d.inputs("test") is d.x_test
    assert torch.equal(d.inputs("train", torch.tensor([3, 1])), d.x_train[[3, 1]])
    with pytest.raises(ValueError, match="uint8 because pixels is set"):
        Dataset("bad", d.x_train, d.y_train, d.x_test, d.y_test, 10, pixels=PixelScale(0.5, 0.25))


def test_cifar_zip_decodes_sorted_and_caches(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_cifar_zip(root)
    d = load_dataset("cifar10", root=root)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10
    assert d.y_train.tolist() == [0, 0, 0, 3, 3, 3, 9, 9, 9]
    assert d.y_test.tolist() == [0, 0, 3, 3, 9, 9]
    # order within a class follows the file name; colours survive JPEG at quality 100 within a few levels
    expected = np.stack([np.full((32, 32, 3), colour(l, i, "train"), np.uint8) for l in (0, 3, 9) for i in range(3)])
    torch.testing.assert_close(d.inputs("train"), cifar_normalise(expected.transpose(0, 3, 1, 2)), atol=0.1, rtol=0)

    cache_files = list((tmp_path / "cache").glob("*.npz"))
    assert len(cache_files) == 1
    # a second process (simulated by clearing the in-process cache) must not decode again
    ds._load_cached.cache_clear()

    def no_decode(path):
        raise AssertionError("decoded although a valid cache exists")

    monkeypatch.setattr(cifar, "_decode_cifar_zip", no_decode)
    cached = load_dataset("cifar10", root=root)
    assert torch.equal(cached.x_train, d.x_train) and torch.equal(cached.y_test, d.y_test)


def test_cifar_corrupt_cache_is_rebuilt(tmp_path):
    root = tmp_path / "data"
    make_cifar_zip(root)
    first = load_dataset("cifar10", root=root)
    (cache_file,) = (tmp_path / "cache").glob("*.npz")
    cache_file.write_bytes(b"garbage")
    ds._load_cached.cache_clear()
    again = load_dataset("cifar10", root=root)
    assert torch.equal(again.x_train, first.x_train)
    with np.load(cache_file) as npz:  # rewritten as a valid archive
        assert npz["x_train"].shape == (9, 3, 32, 32)


def test_cifar_zip_rejects_wrong_image_size(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with zipfile.ZipFile(root / "cifar10-jpeg.zip", "w") as zf:
        zf.writestr("cifar10-jpeg/train/cat/0000.jpg", jpeg_bytes((1, 2, 3), size=(16, 16)))
        zf.writestr("cifar10-jpeg/test/cat/0000.jpg", jpeg_bytes((1, 2, 3)))
    with pytest.raises(ValueError, match="32x32"):
        load_dataset("cifar10", root=root)


def test_cifar_bad_zip_raises_value_error(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar10-jpeg.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(ValueError):
        load_dataset("cifar10", root=root)


@pytest.mark.parametrize("protocol", sorted({2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL}))
def test_cifar_python_batches_preferred_over_zip(tmp_path, protocol):
    root = tmp_path / "data"
    make_cifar_zip(root)
    arrays = make_cifar_batches(root, protocol=protocol)
    d = load_dataset("cifar10", root=root)
    assert d.x_train.shape == (10, 3, 32, 32) and d.x_test.shape == (2, 3, 32, 32)
    assert d.y_train.tolist() == arrays["y_train"].tolist()
    torch.testing.assert_close(d.inputs("train"), cifar_normalise(arrays["x_train"]))
    torch.testing.assert_close(d.inputs("test"), cifar_normalise(arrays["x_test"]))
    assert not (tmp_path / "cache").exists()  # the exact batches need no decode cache


def test_cifar_batches_refuse_foreign_pickles(tmp_path):
    root = tmp_path / "data"
    make_cifar_batches(root)
    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": os.getcwd, b"labels": []}, fh)
    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset("cifar10", root=root)


def test_cifar_incomplete_batches_raise_not_found(tmp_path):
    root = tmp_path / "data"
    make_cifar_batches(root)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match="test_batch"):
        load_dataset("cifar10", root=root)


def test_cifar_missing_lists_both_layouts(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar10-jpeg.zip") in msg and str(tmp_path / "cifar-10-batches-py") in msg
    assert "cifar10" in msg


# --------------------------------------------------------------------------------------------
# Hugging Face data sets saved on disk (dataset: hf)
# --------------------------------------------------------------------------------------------


def save_hf(path: pathlib.Path, train: dict, test: dict, features=None) -> pathlib.Path:
    """A DatasetDict built with Dataset.from_dict and written with save_to_disk (as a user would)."""
    import datasets as hf

    hf.disable_progress_bars()
    hf.DatasetDict(
        train=hf.Dataset.from_dict(train, features=features), test=hf.Dataset.from_dict(test, features=features)
    ).save_to_disk(str(path))
    return path


def hf_config(path, **kw):
    from fedlottery.config import DataConfig

    return DataConfig(dataset="hf", path=str(path), **kw)


def test_hf_pil_images_and_class_labels(tmp_path):
    import datasets as hf

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(14, 5, 6, 3), dtype=np.uint8)
    labels = [0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2]
    features = hf.Features({"img": hf.Image(), "fine": hf.ClassLabel(names=["a", "b", "c", "d"])})
    path = save_hf(tmp_path / "set",
                   {"img": [Image.fromarray(p) for p in pixels[:12]], "fine": labels},
                   {"img": [Image.fromarray(p) for p in pixels[12:]], "fine": [3, 0]}, features)
    d = load_dataset(hf_config(path, image_column="img", label_column="fine"))
    assert isinstance(d, Dataset) and d.num_classes == 4  # from the ClassLabel, though label 3 is test-only
    assert d.input_shape == (3, 5, 6) and d.x_train.shape == (12, 3, 5, 6) and d.x_test.shape == (2, 3, 5, 6)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.y_train.tolist() == labels and d.y_test.tolist() == [3, 0]
    # Per-channel standardisation with the training split's statistics, applied to both splits.
    raw = torch.from_numpy(pixels).permute(0, 3, 1, 2).double() / 255
    mean = raw[:12].mean(dim=(0, 2, 3), keepdim=True)
    std = raw[:12].std(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(d.x_train.double(), (raw[:12] - mean) / std, atol=1e-5)
    assert torch.allclose(d.x_test.double(), (raw[12:] - mean) / std, atol=1e-5)
    assert d.name == "hf:set"
    assert load_dataset(hf_config(path, image_column="img", label_column="fine")) is d  # cached in-process


def test_hf_grayscale_images_are_one_channel(tmp_path):
    rng = np.random.default_rng(1)
    gray = [Image.fromarray(rng.integers(0, 256, size=(4, 4), dtype=np.uint8)) for _ in range(6)]
    path = save_hf(tmp_path / "gray", {"image": gray[:4], "label": [0, 1, 1, 0]},
                   {"image": gray[4:], "label": [1, 0]})
    d = load_dataset(hf_config(path))  # default columns: image, label
    assert d.input_shape == (1, 4, 4) and d.num_classes == 2
    assert abs(float(d.x_train.mean())) < 1e-5 and abs(float(d.x_train.std()) - 1) < 1e-5


@pytest.mark.parametrize("layout", ["hw", "hwc", "chw"])
def test_hf_array_images_and_string_labels(tmp_path, layout):
    rng = np.random.default_rng(2)
    base = rng.integers(0, 256, size=(8, 3, 6, 5), dtype=np.uint8)  # (N, C, H, W)
    if layout == "hw":
        base = base[:, :1]
        stored = base[:, 0]
    else:
        stored = base.transpose(0, 2, 3, 1) if layout == "hwc" else base
    names = ["dog", "cat", "eel", "cat", "dog", "dog"]
    path = save_hf(tmp_path / layout, {"pixels": list(stored[:6]), "kind": names},
                   {"pixels": list(stored[6:]), "kind": ["eel", "ant"]})
    d = load_dataset(hf_config(path, image_column="pixels", label_column="kind"))
    c = 1 if layout == "hw" else 3
    assert d.input_shape == (c, 6, 5) and d.num_classes == 4
    # String labels are numbered in sorted order over both splits: ant 0, cat 1, dog 2, eel 3.
    assert d.y_train.tolist() == [2, 1, 3, 1, 2, 2] and d.y_test.tolist() == [3, 0]
    raw = torch.from_numpy(base).double() / 255
    mean = raw[:6].mean(dim=(0, 2, 3), keepdim=True)
    std = raw[:6].std(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(d.x_train.double(), (raw[:6] - mean) / std, atol=1e-5)


def test_hf_float_arrays_are_not_rescaled(tmp_path):
    x = np.linspace(0, 1, 4 * 3 * 3, dtype=np.float32).reshape(4, 3, 3)
    path = save_hf(tmp_path / "f", {"image": list(x[:3]), "label": [0, 1, 0]}, {"image": list(x[3:]), "label": [1]})
    d = load_dataset(hf_config(path))
    raw = torch.from_numpy(x).double().unsqueeze(1)
    assert torch.allclose(d.x_test.double(), (raw[3:] - raw[:3].mean()) / raw[:3].std(), atol=1e-5)


def test_hf_feeds_partitions(tmp_path):
    from fedlottery.data import PartitionConfig, make_partitions

    rng = np.random.default_rng(3)
    path = save_hf(tmp_path / "p", {"image": list(rng.integers(0, 256, (60, 3, 3), dtype=np.uint8)),
                                    "label": [i % 3 for i in range(60)]},
                   {"image": list(rng.integers(0, 256, (9, 3, 3), dtype=np.uint8)), "label": [i % 3 for i in range(9)]})
    d = load_dataset(hf_config(path))
    splits = make_partitions(d, PartitionConfig(scheme="dirichlet", num_clients=4, alpha=1.0), seed=0)
    assert sum(s.train.numel() + s.val.numel() for s in splits) == 60


def test_hf_config_errors_name_the_key(tmp_path):
    from fedlottery.config import ConfigError, DataConfig, from_dict
    from fedlottery.data import check_data_config

    path = save_hf(tmp_path / "ok", {"image": [np.zeros((2, 2), np.uint8)] * 2, "label": [0, 1]},
                   {"image": [np.zeros((2, 2), np.uint8)], "label": [1]})
    check_data_config(hf_config(path))
    cases = [
        (hf_config(path, image_column="img"), r"^data\.image_column: no column 'img' in the train split"),
        (hf_config(path, label_column="fine"), r"^data\.label_column: no column 'fine'"),
        (hf_config(path, label_column="image"), r"^data\.label_column: column 'image' .* not labels"),
        (hf_config(path, image_column="label"), r"^data\.image_column: column 'label' .* not images"),
        (DataConfig(dataset="hf"), r"^data\.path: dataset hf needs the directory"),
    ]
    for cfg, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            check_data_config(cfg)
        with pytest.raises(ConfigError, match=pattern):
            load_dataset(cfg)
    # The hf-only keys are refused for the other data sets, by the config loader itself.
    with pytest.raises(ConfigError, match=r"^data\.path: only used with dataset: hf"):
        from_dict(DataConfig, {"dataset": "mnist", "path": str(path)}, "data")
    with pytest.raises(ConfigError, match=r"^data\.label_column: only used with dataset: hf"):
        from_dict(DataConfig, {"dataset": "digits", "label_column": "y"}, "data")
    assert from_dict(DataConfig, {"dataset": "hf", "path": str(path)}, "data").image_column is None


def test_hf_layout_errors(tmp_path):
    import datasets as hf

    from fedlottery.data import DataCorruptError, check_data_config

    with pytest.raises(DataNotFoundError, match=r"does not exist or is not a directory"):
        check_data_config(hf_config(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"not written by save_to_disk"):
        check_data_config(hf_config(tmp_path / "empty"))
    hf.disable_progress_bars()
    hf.Dataset.from_dict({"image": [np.zeros((2, 2), np.uint8)], "label": [0]}).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(DataNotFoundError, match=r"holds one Dataset, not a DatasetDict"):
        check_data_config(hf_config(tmp_path / "one"))
    hf.DatasetDict(train=hf.Dataset.from_dict({"image": [np.zeros((2, 2), np.uint8)], "label": [0]})).save_to_disk(
        str(tmp_path / "notest"))
    with pytest.raises(DataNotFoundError, match=r"has no split test \(its splits: train\)"):
        check_data_config(hf_config(tmp_path / "notest"))
    path = save_hf(tmp_path / "unlabelled", {"image": [np.zeros((2, 2), np.uint8)] * 2, "label": [0, 1]},
                   {"image": [np.zeros((2, 2), np.uint8)], "label": [-1]})
    with pytest.raises(DataCorruptError, match=r"label -1"):
        load_dataset(hf_config(path))
    sizes = [Image.new("L", (3, 3)), Image.new("L", (4, 3))]
    path = save_hf(tmp_path / "sizes", {"image": sizes, "label": [0, 1]}, {"image": sizes[:1], "label": [0]},
                   hf.Features({"image": hf.Image(), "label": hf.Value("int64")}))
    with pytest.raises(DataCorruptError, match=r"image 1 is"):
        load_dataset(hf_config(path))
    with pytest.raises(ValueError, match=r"load_dataset\(cfg\.data\)"):
        load_dataset("hf", root=str(path))


def test_load_dataset_takes_a_data_section():
    from fedlottery.config import DataConfig

    assert load_dataset(DataConfig(dataset="digits")) is load_dataset("digits")


# --------------------------------------------------------------------------------------------
# data root resolution
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_fallbacks(tmp_path, monkeypatch):
    """A working dir and repository location, in separate trees, with no ../shared/data next to them."""
    work = tmp_path / "w" / "work"
    repo = tmp_path / "r" / "repo"
    work.mkdir(parents=True)
    repo.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setattr(ds, "_REPO_ROOT", repo)
    return work, repo


def test_resolve_explicit_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLOTTERY_DATA", str(tmp_path))
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    assert resolve_data_root(explicit) == explicit.resolve()
    assert resolve_data_root(str(explicit)) == explicit.resolve()
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "missing")):
        resolve_data_root(tmp_path / "missing")


def test_resolve_env_var(tmp_path, monkeypatch, no_fallbacks):
    monkeypatch.setenv("FEDLOTTERY_DATA", str(tmp_path))
    assert resolve_data_root() == tmp_path.resolve()
    monkeypatch.setenv("FEDLOTTERY_DATA", str(tmp_path / "gone"))
    with pytest.raises(DataNotFoundError) as err:
        resolve_data_root()
    assert str(tmp_path / "gone") in str(err.value) and "FEDLOTTERY_DATA" in str(err.value)


def test_resolve_fallback_order(no_fallbacks):
    work, repo = no_fallbacks
    assert resolve_data_root() is None
    repo_data = repo / ".." / "shared" / "data"
    repo_data.mkdir(parents=True)
    assert resolve_data_root() == repo_data.resolve()
    cwd_data = work / ".." / "shared" / "data"
    cwd_data.mkdir(parents=True)
    assert resolve_data_root() == cwd_data.resolve()  # the working dir's copy wins


def test_resolve_env_beats_fallbacks(tmp_path, monkeypatch, no_fallbacks):
    work, _ = no_fallbacks
    (work / ".." / "shared" / "data").mkdir(parents=True)
    monkeypatch.setenv("FEDLOTTERY_DATA", str(tmp_path))
    assert resolve_data_root() == tmp_path.resolve()


def test_missing_root_lists_every_place(tmp_path, no_fallbacks):
    work, repo = no_fallbacks
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "mnist" in msg and "FEDLOTTERY_DATA" in msg
    assert str(work / ".." / "shared" / "data") in msg and str(repo / ".." / "shared" / "data") in msg
    assert "data.root" in msg and "../shared/data" in msg


def test_explicit_missing_root_names_path(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", root=tmp_path / "no_such_dir")
    assert str(tmp_path / "no_such_dir") in str(err.value) and "fashion_mnist" in str(err.value)


def test_env_root_used_by_loader(tmp_path, monkeypatch, no_fallbacks):
    make_idx_set(tmp_path / "envdata")
    monkeypatch.setenv("FEDLOTTERY_DATA", str(tmp_path / "envdata"))
    assert load_dataset("mnist").x_train.shape == (12, 1, 6, 5)


# --------------------------------------------------------------------------------------------
# train_val_split
# --------------------------------------------------------------------------------------------


def check_split(labels: torch.Tensor, val_size: int, train: torch.Tensor, val: torch.Tensor) -> None:
    n = labels.shape[0]
    assert train.dtype == torch.int64 and val.dtype == torch.int64
    assert val.numel() == val_size and train.numel() == n - val_size
    assert sorted(torch.cat([train, val]).tolist()) == list(range(n))  # disjoint and complete


def test_split_basic_properties():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, val = train_val_split(labels, 10, seed=3)
    check_split(labels, 10, train, val)
    assert torch.bincount(labels[val], minlength=3).tolist() == [5, 3, 2]
    again = train_val_split(labels, 10, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    others = {tuple(train_val_split(labels, 10, seed=s)[1].tolist()) for s in range(5)}
    assert len(others) > 1


def test_split_largest_remainder():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)  # shares of 4: 2.0, 1.2, 0.8
    _, val = train_val_split(labels, 4, seed=0)
    assert torch.bincount(labels[val], minlength=3).tolist() == [2, 1, 1]


def test_split_edge_cases():
    labels = torch.arange(6) % 2
    train, val = train_val_split(labels, 0, seed=0)
    assert val.numel() == 0 and train.tolist() == list(range(6))
    for bad in (6, 7):
        with pytest.raises(ValueError):
            train_val_split(labels, bad, seed=0)
    with pytest.raises(ValueError):
        train_val_split(labels, -1, seed=0)
    with pytest.raises(ValueError):
        train_val_split(labels.float(), 2, seed=0)
    with pytest.raises(ValueError):
        train_val_split(labels.view(2, 3), 2, seed=0)


def test_split_unstratified():
    labels = torch.zeros(40, dtype=torch.int64)
    labels[:4] = 1
    train, val = train_val_split(labels, 8, seed=7, stratified=False)
    check_split(labels, 8, train, val)
    assert torch.equal(train_val_split(labels, 8, seed=7, stratified=False)[1], val)


@settings(max_examples=150, deadline=None)
@given(
    labels=st.lists(st.integers(min_value=0, max_value=5), min_size=2, max_size=80),
    frac=st.floats(min_value=0.0, max_value=0.99),
    seed=st.integers(min_value=0, max_value=2**32),
    stratified=st.booleans(),
)
def test_split_property(labels, frac, seed, stratified):
    y = torch.tensor(labels)
    n = len(labels)
    val_size = min(int(frac * n), n - 1)
    train, val = train_val_split(y, val_size, seed=seed, stratified=stratified)
    check_split(y, val_size, train, val)
    again = train_val_split(y, val_size, seed=seed, stratified=stratified)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    if stratified:
        total = torch.bincount(y, minlength=6).double()
        in_val = torch.bincount(y[val], minlength=6).double()
        assert torch.all((in_val - total * val_size / n).abs() < 1)


# --------------------------------------------------------------------------------------------
# real data (only where ../shared/data exists; MNIST only, to stay fast)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_REAL_MNIST, reason="real MNIST files not present at ../shared/data")
def test_real_mnist():
    d = load_dataset("mnist", root=REAL_ROOT)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.y_train).tolist()[:2] == [5923, 6742]
    assert torch.bincount(d.y_test, minlength=10).sum() == 10000
    x = d.inputs("train")
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
