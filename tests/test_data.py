"""Data sets: where they are looked for, image folders, views, deterministic per-sample augmentation."""

import numpy as np
import pytest
import torch
from PIL import Image

from training.augment import (
    CPUViewMaker,
    byol_views,
    mocov2_views,
    multicrop_views,
    simclr_views,
    with_color_strength,
)
from training.data import ViewDataset, epoch_indices, load_dataset
from training.errors import ConfigError, DataNotFoundError


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(DataNotFoundError, match=f"looked in: {tmp_path}.*--data-dir"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_env_variable_is_searched_first(tmp_path, monkeypatch):
    """A CIFAR-10 in the shared layout, made here, is found through $ZOO_DATA_DIR."""
    d = tmp_path / "mydata" / "cifar10"
    d.mkdir(parents=True)
    classes = np.array(["airplane", "automobile"])
    for name, n in (("train_0", 6), ("train_1", 4), ("test", 3)):
        np.savez(d / f"{name}.npz", images=np.full((n, 32, 32, 3), 7, np.uint8), labels=np.arange(n) % 2,
                 classes=classes, filenames=np.array([f"{i}.png" for i in range(n)]))
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "mydata"))
    train = load_dataset("cifar10", "train")
    assert len(train) == 10 and train.classes == ["airplane", "automobile"] and int(train.images.max()) == 7
    assert len(load_dataset("cifar10", "test")) == 3


def test_labelled_and_flat_image_folders(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "lab" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 10), (i * 50, 0, 0)).save(tmp_path / "lab" / cls / f"{i}.jpg")
    lab = load_dataset(str(tmp_path / "lab"))
    assert len(lab) == 6 and lab.classes == ["cat", "dog"] and list(lab.labels) == [0, 0, 0, 1, 1, 1]
    assert lab.image(0).shape == (3, 10, 20) and lab.image(0).dtype == torch.uint8
    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "a.png")
    flat = load_dataset(str(tmp_path / "flat"))
    assert flat.labels is None and flat.image(0).shape == (3, 8, 8)


def test_corrupt_image_in_a_folder_is_named(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataNotFoundError, match="broken.jpg"):
        load_dataset(str(tmp_path / "d")).image(0)


def test_empty_folder_and_unknown_name():
    with pytest.raises(DataNotFoundError, match="unknown data set"):
        load_dataset("mnist")


@pytest.mark.parametrize("spec", [simclr_views(16), mocov2_views(16), byol_views(16), multicrop_views(16, 8, 3)])
def test_views_have_the_spec_sizes_and_are_reproducible(tiny_data, spec):
    from zoo.backbones import CIFAR10_MEAN, CIFAR10_STD

    ds = ViewDataset(tiny_data, CPUViewMaker(spec, CIFAR10_MEAN, CIFAR10_STD), seed=0)
    views = ds[5][0]
    assert [v.shape[-1] for v in views] == [vc.size for vc in spec.views]
    assert all(v.dtype == torch.float32 for v in views)
    again = ds[5][0]
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0][0], views[0])


def test_epoch_shards_cover_the_global_batches():
    one = epoch_indices(100, epoch=2, seed=0, batch_size=8)
    shards = [epoch_indices(100, epoch=2, seed=0, rank=r, world=2, batch_size=4) for r in range(2)]
    assert len(one) == 96 and sorted(one) == sorted(shards[0] + shards[1])
    for b in range(len(one) // 8):  # each global batch holds the same images, split across processes
        assert sorted(one[b * 8:(b + 1) * 8]) == sorted(shards[0][b * 4:(b + 1) * 4] + shards[1][b * 4:(b + 1) * 4])


def test_cifar10_from_shared_data(cifar_dir):
    d = load_dataset("cifar10", "test", limit=100)
    assert d.images.shape == (100, 32, 32, 3) and d.classes[0] == "airplane"
    assert len(load_dataset("cifar10", "train")) == 50000


def test_imagenette_from_shared_data(cifar_dir):
    d = load_dataset("imagenette", "test")
    assert d.images.shape == (3925, 96, 96, 3) and np.bincount(d.labels).sum() == 3925


def test_batched_views_on_the_device_path(tiny_data):
    """The kornia path (used on CUDA) makes the same kinds of views per batch; here it runs on the CPU."""
    from training.augment import GPUViewMaker
    from zoo.backbones import CIFAR10_MEAN, CIFAR10_STD

    maker = GPUViewMaker(byol_views(16), CIFAR10_MEAN, CIFAR10_STD)
    batch = torch.stack([tiny_data.image(i) for i in range(8)])
    v1, v2 = maker(batch)
    assert v1.shape == v2.shape == (8, 3, 16, 16) and not torch.equal(v1, v2)
    assert abs(float(v1.mean())) < 3 and v1.dtype == torch.float32


def test_color_strength_scales_or_removes_the_colour_distortion():
    spec = byol_views(32)
    assert with_color_strength(spec, 1.0) is spec
    half = with_color_strength(spec, 0.5)
    assert [v.jitter for v in half.views] == [tuple(0.5 * j for j in v.jitter) for v in spec.views]
    assert [v.grayscale_p for v in half.views] == [v.grayscale_p for v in spec.views]
    none = with_color_strength(spec, 0.0)
    assert all(v.jitter_p == v.grayscale_p == v.solarize_p == 0 for v in none.views)
    assert [(v.scale, v.blur_p, v.flip_p) for v in none.views] == [(v.scale, v.blur_p, v.flip_p) for v in spec.views]
    with pytest.raises(ConfigError, match="color-strength"):
        with_color_strength(spec, -1)
