"""Native sizes for ``folder:`` (diffvae.folders, issue 24): without --size a folder keeps its images' own size
(square centre crop at the smallest shorter side, pixel for pixel where nothing needs resizing), refuses a size above
64 px (or below 8) in one line that says to pass --size, says what it did in ``data info``, and caches by the decision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffvae.cli import main
from diffvae.data import _resize_center_crop, describe, load_data
from diffvae.errors import DiffvaeError
from diffvae.folders import MAX_FOLDER_SIZE, sizes_text


def _folder(root, sizes, per_class=3, seed=0):
    """PNGs of random RGB pixels in two class subfolders; ``sizes`` are (width, height), cycled over the files.
    Returns {relative path: the (H, W, 3) array written}."""
    rng = np.random.default_rng(seed)
    written = {}
    for k in range(2 * per_class):
        width, height = sizes[k % len(sizes)]
        path = root / ("a" if k % 2 else "b") / f"{k:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        written[path] = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(written[path]).save(path)
    return written


def _all_images(ds) -> torch.Tensor:
    return torch.cat([ds.train, ds.test])


def _contains(images: torch.Tensor, array: np.ndarray) -> bool:
    """Whether uint8 (N, C, H, W) ``images`` holds the (H, W, C) ``array`` exactly."""
    target = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    return any(torch.equal(image, target) for image in images)


@pytest.mark.parametrize("side", [28, 32, 64])
def test_a_folder_keeps_its_images_own_size_pixel_for_pixel(tmp_path, side):
    written = _folder(tmp_path / "images", [(side, side)])
    ds = load_data(f"folder:{tmp_path / 'images'}", test_fraction=0.3)
    assert ds.image_shape == (3, side, side) and ds.num_classes == 2
    images = _all_images(ds)
    assert len(images) == len(written) and all(_contains(images, array) for array in written.values())
    assert f"{side}×{side} px, the images' own size" in ds.origin and "kept as they are" in ds.origin


def test_non_square_images_are_centre_cropped_without_resampling(tmp_path):
    written = _folder(tmp_path / "wide", [(40, 32)])  # 40 wide, 32 high: columns 4..35 are the centre
    ds = load_data(f"folder:{tmp_path / 'wide'}", test_fraction=0.3)
    assert ds.image_shape == (3, 32, 32)
    assert all(_contains(_all_images(ds), array[:, 4:36]) for array in written.values())
    assert "6 non-square centre-cropped to a square" in ds.origin and "resized" not in ds.origin


def test_mixed_sizes_take_the_smallest_shorter_side_and_never_enlarge(tmp_path):
    written = _folder(tmp_path / "mixed", [(32, 32), (48, 48), (64, 40)], per_class=3)
    ds = load_data(f"folder:{tmp_path / 'mixed'}", test_fraction=0.3)
    assert ds.image_shape == (3, 32, 32)
    images = _all_images(ds)
    for array in written.values():
        expected = array if array.shape[0] == 32 else np.asarray(_resize_center_crop(Image.fromarray(array), 32))
        assert _contains(images, expected)  # the 32 px images untouched, the others as --size 32 would make them
    assert "from 6 images of 32×32, 64×40, 48×48" in ds.origin
    assert "2 non-square centre-cropped to a square, 4 resized down to 32 px" in ds.origin and "enlarged" not in ds.origin
    by_flag = load_data(f"folder:{tmp_path / 'mixed'}", size=32, test_fraction=0.3)
    assert by_flag.content_hash() == ds.content_hash() and "resized by --size 32" in by_flag.origin


def test_an_oversized_folder_is_refused_in_one_line_that_says_to_pass_size(tmp_path, capsys):
    _folder(tmp_path / "big", [(300, 300), (320, 300)])
    with pytest.raises(DiffvaeError, match=r"300 px on their shorter side, above the 64 px .* pass --size N"):
        load_data(f"folder:{tmp_path / 'big'}")
    assert main(["data", "info", f"folder:{tmp_path / 'big'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("diffvae: error: ") and "300×300, 320×300" in err
    ds = load_data(f"folder:{tmp_path / 'big'}", size=MAX_FOLDER_SIZE, test_fraction=0.3)
    assert ds.image_shape == (3, 64, 64) and "resized by --size 64" in ds.origin and "6 resized down to 64 px" in ds.origin


def test_a_folder_just_above_the_cap_is_refused_and_one_at_it_is_kept(tmp_path):
    _folder(tmp_path / "at", [(64, 80)])
    assert load_data(f"folder:{tmp_path / 'at'}", test_fraction=0.3).image_shape == (3, 64, 64)
    _folder(tmp_path / "above", [(65, 65)])
    with pytest.raises(DiffvaeError, match="65 px"):
        load_data(f"folder:{tmp_path / 'above'}")


def test_tiny_images_are_refused_unless_resized(tmp_path):
    _folder(tmp_path / "tiny", [(6, 6)])
    with pytest.raises(DiffvaeError, match=r"6 px on its shorter side, below the 8 px .*--size N"):
        load_data(f"folder:{tmp_path / 'tiny'}")
    assert load_data(f"folder:{tmp_path / 'tiny'}", size=8, test_fraction=0.3).image_shape == (3, 8, 8)


def test_the_cache_follows_the_size_decision(tmp_path):
    root = tmp_path / "images"
    _folder(root, [(64, 64)])
    native = load_data(f"folder:{root}", test_fraction=0.3)
    assert load_data(f"folder:{root}", size=32, test_fraction=0.3).image_shape == (3, 32, 32)  # another entry
    assert load_data(f"folder:{root}", test_fraction=0.3).content_hash() == native.content_hash()
    Image.fromarray(np.zeros((48, 50, 3), np.uint8)).save(root / "a" / "small.png")  # the decision changes: 48 px
    again = load_data(f"folder:{root}", test_fraction=0.3)
    assert again.image_shape == (3, 48, 48) and "resized down to 48 px" in again.origin


def test_data_info_reports_a_64_px_folder_and_what_was_done(tmp_path, capsys):
    _folder(tmp_path / "images", [(64, 64)])
    assert main(["data", "info", f"folder:{tmp_path / 'images'}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "images      3×64×64 uint8 (RGB), 12288 dims per image" in out
    assert ("size        64×64 px, the images' own size (their smallest shorter side); from 6 images of 64×64: "
            "kept as they are (no cropping, no resampling)") in out
    assert main(["data", "info", f"folder:{tmp_path / 'images'}", "--size", "32"]) == 0
    assert "size        32×32 px, resized by --size 32; from 6 images of 64×64: 6 resized down to 32 px" in capsys.readouterr().out


def test_other_sources_say_nothing_about_a_size_decision():
    assert "size        " not in describe(load_data("digits"))


def test_sizes_are_listed_or_summarised():
    assert sizes_text([(64, 64)] * 3) == "64×64"
    assert sizes_text([(80, 64), (48, 60), (48, 60)]) == "48×60, 80×64"
    assert sizes_text([(300, 200), (40, 48), (64, 64), (50, 50), (41, 49)]) == "5 sizes, 40×48 to 300×200"
