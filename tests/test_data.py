"""diffvae.data: every source, the fixed split, resizing/binarizing, and the one-line errors."""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffvae.data import describe, held_out_split, load_data, make_shapes, parse_idx, IDX_IMAGES_MAGIC
from diffvae.errors import DiffvaeError


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(row) for row in images.flatten(1).numpy()}


def _nearest_mean_accuracy(ds) -> float:
    """Classify test images by the nearest training-class mean: high only if labels follow their images."""
    train, test = ds.train.flatten(1).double(), ds.test.flatten(1).double()
    means = torch.stack([train[ds.train_labels == k].mean(0) for k in range(ds.num_classes)])
    predicted = torch.cdist(test, means).argmin(1)
    return (predicted == ds.test_labels).double().mean().item()


def _ink_spread(images: torch.Tensor) -> tuple[float, float]:
    """Mean intensity-weighted standard deviation of ink along x (columns) and y (rows)."""
    u = images[:, 0].double()
    coords = torch.arange(u.shape[-1], dtype=torch.float64)
    mass = u.sum((1, 2))
    px, py = u.sum(1) / mass[:, None], u.sum(2) / mass[:, None]
    sx = ((px * coords**2).sum(1) - (px * coords).sum(1) ** 2).sqrt()
    sy = ((py * coords**2).sum(1) - (py * coords).sum(1) ** 2).sqrt()
    return sx.mean().item(), sy.mean().item()


# ---------------------------------------------------------------------------- built-in sources


def test_mnist_split_labels_and_orientation():
    ds = load_data("mnist")
    assert ds.train.dtype == torch.uint8 and ds.train.shape == (4500, 1, 28, 28)
    assert ds.test.shape == (500, 1, 28, 28) and ds.image_shape == (1, 28, 28)
    assert ds.num_classes == 10 and ds.train_labels.dtype == torch.int64
    # The file is sorted by class with 500 per digit: both splits must see every digit.
    assert set(ds.train_labels.tolist()) == set(range(10)) == set(ds.test_labels.tolist())
    counts = torch.bincount(torch.cat([ds.train_labels, ds.test_labels]), minlength=10)
    assert counts.tolist() == [500] * 10
    assert int(ds.train.max()) == 255 and int(ds.train.min()) == 0
    assert _nearest_mean_accuracy(ds) > 0.7  # chance is 0.1
    # A "1" is a vertical stroke: ink spreads far more along rows than columns (a transposed read fails).
    spread_x, spread_y = _ink_spread(ds.train[ds.train_labels == 1])
    assert spread_y > 2 * spread_x


def test_digits_levels_orientation_and_sklearn_oracle():
    ds = load_data("digits")
    assert ds.train.shape[1:] == (1, 8, 8) and ds.train.dtype == torch.uint8
    assert ds.train.shape[0] + ds.test.shape[0] == 1797
    mapped = {round(v * 255 / 16) for v in range(17)}
    values = set(torch.cat([ds.train, ds.test]).unique().tolist())
    assert len(values) <= 17 and values <= mapped and {0, 255} <= values
    assert _nearest_mean_accuracy(ds) > 0.8
    spread_x, spread_y = _ink_spread(ds.train[ds.train_labels == 1])
    assert spread_y > 1.3 * spread_x

    from sklearn.datasets import load_digits

    reference = load_digits()
    ours = torch.cat([ds.train, ds.test]).flatten(1).double() * 16 / 255
    ours_levels = ours.round().to(torch.int64).numpy()
    assert np.abs(ours.numpy() - ours_levels).max() < 0.04  # every pixel sits on one of the 17 levels
    ours_labels = torch.cat([ds.train_labels, ds.test_labels]).numpy()
    mine = sorted(zip(map(bytes, ours_levels.astype(np.uint8)), ours_labels.tolist()))
    theirs = sorted(zip(map(bytes, reference.data.astype(np.uint8)), reference.target.tolist()))
    assert mine == theirs


def test_same_call_same_tensors_and_seed_changes_split():
    a, b = load_data("digits", seed=3), load_data("digits", seed=3)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert torch.equal(a.train_labels, b.train_labels) and a.content_hash() == b.content_hash()
    c = load_data("digits", seed=4)
    assert not torch.equal(a.test, c.test) and a.content_hash() != c.content_hash()
    s1, s2 = load_data("shapes", seed=5), load_data("shapes", seed=5)
    assert torch.equal(s1.train, s2.train) and torch.equal(s1.attributes["x"], s2.attributes["x"])


def test_held_out_split_is_a_disjoint_partition():
    train, test = held_out_split(1000, 0.1, seed=0)
    assert len(test) == 100 and len(train) == 900
    assert sorted(torch.cat([train, test]).tolist()) == list(range(1000))
    assert not torch.equal(train[:10], torch.arange(100, 110))  # shuffled, not a slice
    ds = load_data("shapes", test_fraction=0.25)
    assert ds.test.shape[0] == 1500 and ds.train.shape[0] == 4500
    assert not (_rows(ds.train) & _rows(ds.test))
    with pytest.raises(DiffvaeError, match="test_fraction"):
        held_out_split(5, 0.01, seed=0)


def test_limit_keeps_first_training_images_and_whole_test():
    full, small = load_data("digits"), load_data("digits", limit=100)
    assert torch.equal(small.train, full.train[:100]) and torch.equal(small.train_labels, full.train_labels[:100])
    assert torch.equal(small.test, full.test)
    shapes_full, shapes_small = load_data("shapes"), load_data("shapes", limit=50)
    n_test = shapes_full.test.shape[0]
    assert shapes_small.attributes["x"].shape == (50 + n_test,)
    assert torch.equal(shapes_small.attributes["x"][:50], shapes_full.attributes["x"][:50])
    assert torch.equal(shapes_small.attributes["x"][50:], shapes_full.attributes["x"][-n_test:])


def test_binarize_thresholds_at_128():
    plain, binary = load_data("mnist"), load_data("mnist", binarize=True)
    assert set(binary.train.unique().tolist()) == {0, 255}
    expected = (plain.train.to(torch.int64) >= 128).to(torch.uint8) * 255
    assert torch.equal(binary.train, expected)
    assert binary.content_hash() != plain.content_hash()


def test_size_downscale_matches_antialiased_bilinear():
    plain, small = load_data("mnist", size=14), load_data("mnist")
    assert plain.train.shape[1:] == (1, 14, 14) and plain.train.dtype == torch.uint8
    reference = F.interpolate(small.train[:200].double(), size=(14, 14), mode="bilinear", antialias=True)
    assert (plain.train[:200].double() - reference).abs().max() <= 1.0
    up = load_data("digits", size=32)
    assert up.train.shape[1:] == (1, 32, 32)
    assert torch.equal(up.train_labels, load_data("digits").train_labels)


# ---------------------------------------------------------------------------- shapes


def test_shapes_attributes_match_pixels():
    ds = load_data("shapes", seed=1)
    assert ds.num_classes == 3 and ds.class_names == ["circle", "square", "triangle"]
    assert ds.train.shape == (5400, 1, 32, 32) and ds.test.shape == (600, 1, 32, 32)
    labels = torch.cat([ds.train_labels, ds.test_labels])
    assert torch.bincount(labels).tolist() == [2000, 2000, 2000]
    images = torch.cat([ds.train, ds.test])[:, 0].double()
    x, y, side, level = (ds.attributes[k].double() for k in ("x", "y", "size", "intensity"))
    coords = torch.arange(32, dtype=torch.float64)
    mass = images.sum((1, 2))
    centroid_x = (images.sum(1) * coords).sum(1) / mass
    centroid_y = (images.sum(2) * coords).sum(1) / mass
    assert (centroid_x - x).abs().max() < 0.15 and (centroid_y - y).abs().max() < 0.15
    # Ink area (sum / fill level) against each class's analytic area: π s²/4, s², √3 s²/4.
    area = torch.stack([math.pi * side**2 / 4, side**2, math.sqrt(3) / 4 * side**2])[labels, torch.arange(len(side))]
    assert ((mass / level) / area - 1).abs().max() < 0.05
    assert (images.amax((1, 2)) - level).abs().max() <= 0.5  # the interior is fully covered
    # Triangles are wider at the bottom: more ink below the centroid row's half-width than above.
    tri = images[labels == 2]
    assert (tri.sum(2).argmax(1).double() > y[labels == 2]).all()


def test_shapes_size_sets_resolution():
    images, labels, attributes = make_shapes(30, size=16, generator=torch.Generator().manual_seed(0))
    assert images.shape == (30, 1, 16, 16) and labels.shape == (30,)
    assert (attributes["size"] >= 4).all() and (attributes["size"] <= 0.55 * 16 + 1e-4).all()
    assert load_data("shapes", size=16).train.shape[1:] == (1, 16, 16)
    with pytest.raises(DiffvaeError, match="size"):
        make_shapes(3, size=4)


# ---------------------------------------------------------------------------- folder


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_folder_class_subfolders_grey_and_rgb(tmp_path):
    for k in range(6):
        _png(tmp_path / "grey" / "cats" / f"{k}.png", np.full((12, 12), 10 * k))
        _png(tmp_path / "grey" / "dogs" / f"{k}.png", np.full((12, 12), 200))
    ds = load_data(f"folder:{tmp_path / 'grey'}", size=8, test_fraction=0.25)
    assert ds.train.shape[1:] == (1, 8, 8) and ds.num_classes == 2 and ds.class_names == ["cats", "dogs"]
    all_images = torch.cat([ds.train, ds.test])
    all_labels = torch.cat([ds.train_labels, ds.test_labels])
    assert (all_images[all_labels == 1] == 200).all() and (all_images[all_labels == 0] < 60).all()

    _png(tmp_path / "rgb" / "a.png", np.zeros((10, 10), dtype=np.uint8))
    red = np.zeros((10, 10, 3), dtype=np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "rgb" / "b.jpg", quality=95)
    rgb = load_data(f"folder:{tmp_path / 'rgb'}", test_fraction=0.5)
    assert rgb.train.shape[1:] == (3, 10, 10) and rgb.train_labels is None and rgb.num_classes is None  # their own size
    images = torch.cat([rgb.train, rgb.test]).double()
    reds = images[images.sum((1, 2, 3)) > 0]
    assert reds[:, 0].mean() > 240 and reds[:, 1:].mean() < 15


def test_folder_resize_keeps_the_centre(tmp_path):
    wide = np.zeros((20, 40), dtype=np.uint8)
    wide[:, 10:30] = 255  # the central square of a 40×20 image
    for k in range(2):
        _png(tmp_path / f"{k}.png", wide)
    ds = load_data(f"folder:{tmp_path}", size=10, test_fraction=0.5)
    assert ds.train.shape == (1, 1, 10, 10)
    # 40×20 → 20×10, crop columns 5..14: all white but the outer columns, blurred by the black beyond.
    assert (ds.train[..., 1:9] == 255).all() and (ds.train[..., [0, 9]] > 128).all()


def test_folder_errors(tmp_path):
    with pytest.raises(DiffvaeError, match="no PNG or JPEG"):
        (tmp_path / "empty").mkdir()
        load_data(f"folder:{tmp_path / 'empty'}")
    _png(tmp_path / "bad" / "ok.png", np.zeros((4, 4)))
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DiffvaeError, match="broken.png"):
        load_data(f"folder:{tmp_path / 'bad'}")
    with pytest.raises(DiffvaeError, match="not found"):
        load_data(f"folder:{tmp_path / 'missing'}")


# ---------------------------------------------------------------------------- npz


def test_npz_layouts_agree_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, size=(20, 3, 6, 5), dtype=np.uint8)
    labels = rng.integers(0, 4, size=20)
    np.savez(tmp_path / "nchw.npz", x=nchw, y=labels)
    np.savez(tmp_path / "nhwc.npz", images=nchw.transpose(0, 2, 3, 1), labels=labels)
    alpha = np.full((20, 6, 5, 1), 7, dtype=np.uint8)
    np.savez(tmp_path / "rgba.npz", np.concatenate([nchw.transpose(0, 2, 3, 1), alpha], axis=3))
    results = [load_data(f"npz:{tmp_path / n}.npz", test_fraction=0.2) for n in ("nchw", "nhwc", "rgba")]
    train_index, test_index = held_out_split(20, 0.2, seed=0)
    for ds in results:
        assert torch.equal(ds.train, torch.from_numpy(nchw)[train_index])
        assert torch.equal(ds.test, torch.from_numpy(nchw)[test_index])
    assert torch.equal(results[0].train_labels, torch.from_numpy(labels)[train_index])
    assert results[0].num_classes == int(labels.max()) + 1 and results[2].train_labels is None

    grey = rng.integers(0, 256, size=(10, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", grey)
    ds = load_data(f"npz:{tmp_path / 'grey.npz'}", test_fraction=0.2)
    assert ds.train.shape[1:] == (1, 4, 4)


def test_npz_key_selection_and_errors(tmp_path):
    a, b = np.zeros((6, 4, 4), np.uint8), np.full((6, 4, 4), 9, np.uint8)
    np.savez(tmp_path / "two.npz", first=a, second=b)
    assert (load_data(f"npz:{tmp_path / 'two.npz'}", key="second", test_fraction=0.5).train == 9).all()
    with pytest.raises(DiffvaeError, match="pick one with --key NAME"):
        load_data(f"npz:{tmp_path / 'two.npz'}")
    with pytest.raises(DiffvaeError, match="first, second"):
        load_data(f"npz:{tmp_path / 'two.npz'}", key="third")
    np.savez(tmp_path / "float.npz", x=np.zeros((6, 4, 4), np.float32))
    with pytest.raises(DiffvaeError, match="uint8"):
        load_data(f"npz:{tmp_path / 'float.npz'}")
    np.savez(tmp_path / "flat.npz", x=np.zeros((6, 16), np.uint8))
    with pytest.raises(DiffvaeError, match=r"\(6, 16\)"):
        load_data(f"npz:{tmp_path / 'flat.npz'}")


# ---------------------------------------------------------------------------- idx


def _idx_images(images: np.ndarray, magic: int = 0x00000803) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", magic, n, h, w) + images.tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def test_idx_plain_gzip_and_explicit_labels(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(10, 5, 7), dtype=np.uint8)
    labels = rng.integers(0, 10, size=10).astype(np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_images(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_labels(labels))
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_images(images)))
    (tmp_path / "gz" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_labels(labels)))
    (tmp_path / "imgs.bin").write_bytes(_idx_images(images))
    (tmp_path / "labs.bin").write_bytes(_idx_labels(labels))
    train_index, _ = held_out_split(10, 0.2, seed=0)
    for spec in (
        f"idx:{tmp_path / 'train-images-idx3-ubyte'}",
        f"idx:{tmp_path / 'gz' / 't10k-images-idx3-ubyte.gz'}",
        f"idx:{tmp_path / 'imgs.bin'},{tmp_path / 'labs.bin'}",
    ):
        ds = load_data(spec, test_fraction=0.2)
        assert torch.equal(ds.train[:, 0], torch.from_numpy(images)[train_index])
        assert torch.equal(ds.train_labels, torch.from_numpy(labels.astype(np.int64))[train_index])
    assert load_data(f"idx:{tmp_path / 'imgs.bin'}", test_fraction=0.2).train_labels is None


def test_idx_truncated_and_bad_magic(tmp_path):
    images = np.zeros((4, 3, 3), dtype=np.uint8)
    (tmp_path / "short").write_bytes(_idx_images(images)[:-5])
    with pytest.raises(DiffvaeError, match="truncated"):
        load_data(f"idx:{tmp_path / 'short'}")
    (tmp_path / "short.gz").write_bytes(gzip.compress(_idx_images(images))[:-6])
    with pytest.raises(DiffvaeError, match="gzip"):
        load_data(f"idx:{tmp_path / 'short.gz'}")
    (tmp_path / "magic").write_bytes(_idx_images(images, magic=0x00000D03))
    with pytest.raises(DiffvaeError, match="magic"):
        load_data(f"idx:{tmp_path / 'magic'}")
    assert parse_idx(_idx_images(images), IDX_IMAGES_MAGIC, "x").shape == (4, 3, 3)


# ---------------------------------------------------------------------------- specs, options, summary


@pytest.mark.parametrize("spec", ["cifar10", "zip:/tmp/x", "", "mnist:extra"])
def test_unknown_spec_lists_the_valid_ones(spec):
    with pytest.raises(DiffvaeError, match="valid specs: mnist, digits, shapes, colours, photos, folder:PATH, npz:PATH, "
                                           r"idx:PATH \(or idx:IMAGES,LABELS\), packed:DIR$"):
        load_data(spec)


def test_path_spec_without_path():
    with pytest.raises(DiffvaeError, match="needs a path"):
        load_data("folder:")


def test_missing_path_and_bad_options(tmp_path):
    for kind in ("npz", "idx"):
        with pytest.raises(DiffvaeError, match="not found"):
            load_data(f"{kind}:{tmp_path / 'nope'}")
    for kwargs in ({"test_fraction": 0.0}, {"test_fraction": 1.0}, {"limit": 0}, {"size": 0}):
        with pytest.raises(DiffvaeError):
            load_data("digits", **kwargs)


def test_content_hash_sees_one_pixel_and_describe_summarises():
    ds = load_data("digits")
    before = ds.content_hash()
    assert len(before) == 16 and int(before, 16) >= 0
    ds.test[0, 0, 0, 0] ^= 1
    assert ds.content_hash() != before
    text = describe(load_data("shapes"))
    assert "shapes" in text and "5400 train / 600 test" in text and "triangle" in text and "size" in text


@pytest.fixture(autouse=True)
def _pack_cache_in_tmp(tmp_path, monkeypatch):
    """Folder sources cache their decoded pack (diffvae.pack.cached_folder): keep it out of ~/.cache."""
    monkeypatch.setenv("DIFFVAE_CACHE", str(tmp_path / "cache"))


def test_pixel_statistics_match_numpy_and_describe_reports_them():
    from diffvae.data import pixel_statistics

    ds = load_data("mnist")
    pixels = ds.train.numpy().astype(np.float64)
    mean, std, levels = pixel_statistics(ds.train, chunk=333)  # chunks that do not divide the set
    assert mean == pytest.approx(pixels.mean(), rel=1e-12) and std == pytest.approx(pixels.std(ddof=1), rel=1e-12)
    assert levels == len(np.unique(pixels))
    assert f"train mean {pixels.mean():.1f}, std {pixels.std(ddof=1):.1f}, {levels} distinct levels" in describe(ds)


def test_limit_and_binarize_equal_applying_them_before_the_split():
    """load_data applies --limit and --binarize after the split: per image and per pixel, so the result is
    the first `limit` images of the shuffled split, thresholded (the order they had before)."""
    full = load_data("digits", seed=4)
    ds = load_data("digits", seed=4, limit=70, binarize=True)
    train_index, test_index = held_out_split(1797, 0.1, 4)
    assert torch.equal(ds.train, torch.where(full.train[:70] >= 128, 255, 0).to(torch.uint8))
    assert torch.equal(ds.test, torch.where(full.test >= 128, 255, 0).to(torch.uint8))
    assert torch.equal(ds.train_labels, full.train_labels[:70]) and torch.equal(ds.test_labels, full.test_labels)
    assert len(train_index) == 1617 and len(test_index) == 180
    shapes = load_data("shapes", limit=10)
    reference = load_data("shapes")
    for name, values in shapes.attributes.items():
        assert torch.equal(values, torch.cat([reference.attributes[name][:10], reference.attributes[name][5400:]]))


@pytest.mark.parametrize("spec", ["digits", "shapes", "folder:{tmp}"])
def test_key_on_data_without_arrays_is_refused(spec, tmp_path):
    """Regression (issue 27, hostile pass): ``--key x`` on digits (or a folder) was silently ignored."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(DiffvaeError, match="--key 'x' applies to npz:PATH data"):
        load_data(spec.format(tmp=tmp_path), key="x")
