"""The built-in colour sources (``colours``, ``photos``) and the hflip augmentation."""

import colorsys

import pytest
import torch

from diffvae.colour import COLOUR_CLASSES, COLOUR_SHAPES, hflip, hflip_generator, hsv_to_rgb, make_colours, photo
from diffvae.data import describe, load_data
from diffvae.errors import DiffvaeError


@pytest.fixture(scope="module")
def colours():
    return load_data("colours")


def nearest_centroid_accuracy(ds) -> float:
    """Held-out accuracy of the nearest class mean on raw pixels (an independent, trivial classifier)."""
    x_train, x_test = ds.train.flatten(1).float(), ds.test.flatten(1).float()
    centroids = torch.stack([x_train[ds.train_labels == k].mean(0) for k in range(ds.num_classes)])
    predicted = torch.cdist(x_test, centroids).argmin(1)
    return float((predicted == ds.test_labels).float().mean())


def test_colours_shape_labels_and_determinism(colours):
    assert colours.name == "colours"
    assert colours.image_shape == (3, 32, 32) and colours.train.dtype == torch.uint8
    assert colours.num_classes == 10 and colours.class_names == list(COLOUR_CLASSES)
    labels = torch.cat([colours.train_labels, colours.test_labels])
    assert labels.min() >= 0 and labels.max() <= 9
    assert torch.bincount(labels, minlength=10).tolist() == [600] * 10  # balanced
    again = load_data("colours")
    assert torch.equal(again.train, colours.train) and torch.equal(again.test_labels, colours.test_labels)
    other = load_data("colours", seed=1)
    assert not torch.equal(other.train[:100], colours.train[:100])
    assert load_data("colours", size=16).image_shape == (3, 16, 16)
    # colour: the three channels differ (not grey stored as RGB)
    assert (colours.train[:, 0] != colours.train[:, 1]).float().mean() > 0.5


def test_colours_classes_are_distinguishable(colours):
    accuracy = nearest_centroid_accuracy(colours)
    assert accuracy > 0.6, accuracy  # chance is 0.1


def test_colour_of_the_shape_matches_its_class_hue():
    images, labels, attributes = make_colours(200, 32, torch.Generator().manual_seed(3))
    solid = labels % len(COLOUR_SHAPES) != COLOUR_SHAPES.index("ring")  # a ring has a hole at its centre
    for i in torch.nonzero(solid).flatten().tolist():
        x, y = round(float(attributes["x"][i])), round(float(attributes["y"][i]))
        r, g, b = (images[i, :, y, x].double() / 255).tolist()
        hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360
        wrapped = min(abs(hue - float(attributes["hue"][i])), 360 - abs(hue - float(attributes["hue"][i])))
        assert wrapped < 3.0, (i, hue, float(attributes["hue"][i]))
        expected_class_hue = 36.0 * int(labels[i])
        assert min(abs(hue - expected_class_hue), 360 - abs(hue - expected_class_hue)) < 8.0


def test_hsv_to_rgb_matches_colorsys():
    g = torch.Generator().manual_seed(0)
    h, s, v = torch.rand(500, generator=g, dtype=torch.float64), torch.rand(500, generator=g, dtype=torch.float64), \
        torch.rand(500, generator=g, dtype=torch.float64)
    ours = hsv_to_rgb(h, s, v)
    reference = torch.tensor([colorsys.hsv_to_rgb(*values) for values in zip(h.tolist(), s.tolist(), v.tolist())])
    assert torch.allclose(ours, reference.double(), atol=1e-12)


def test_photos_are_patches_of_the_sklearn_photos_labelled_by_photo():
    ds = load_data("photos")
    assert ds.image_shape == (3, 32, 32) and ds.num_classes == 2 and ds.class_names == ["china", "flower"]
    assert set(torch.cat([ds.train_labels, ds.test_labels]).tolist()) == {0, 1}
    assert nearest_centroid_accuracy(ds) > 0.65  # chance is 0.5: the two photos differ in colour
    # each patch is its photo's crop (centre x, y; side scale·32) resized: check against torch's own resize
    from diffvae.colour import make_photo_patches

    images, labels, attributes = make_photo_patches(20, 32, torch.Generator().manual_seed(0))
    for i in range(20):
        crop = round(float(attributes["scale"][i]) * 32)
        left, top = round(float(attributes["x"][i]) - (crop - 1) / 2), round(float(attributes["y"][i]) - (crop - 1) / 2)
        region = torch.from_numpy(photo(int(labels[i]))[top:top + crop, left:left + crop]).permute(2, 0, 1).double()
        assert region.shape[1:] == (crop, crop)
        resized = torch.nn.functional.interpolate(region[None], size=(32, 32), mode="bilinear", antialias=True)[0]
        assert (resized - images[i].double()).abs().mean() < 1.0  # levels (measured 0.3); 6 px off gives up to 36


def test_data_info_and_spec_list_name_the_colour_sources(colours):
    text = describe(colours)
    assert "3×32×32 uint8 (RGB)" in text and "10 classes" in text and "red-circle" in text
    with pytest.raises(DiffvaeError, match="colours, photos"):
        load_data("no-such-source")


def test_hflip_flips_exactly_the_chosen_images_at_the_asked_rate():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4000, 3, 5, 7), dtype=torch.uint8, generator=g)
    before = images.clone()
    out = hflip(images, 0.3, torch.Generator().manual_seed(11))
    chosen = torch.rand(4000, generator=torch.Generator().manual_seed(11)) < 0.3  # the documented draw
    assert torch.equal(images, before)  # the input is untouched
    assert torch.equal(out[chosen], before[chosen][..., torch.arange(6, -1, -1)])
    assert torch.equal(out[~chosen], before[~chosen])
    assert abs(float(chosen.float().mean()) - 0.3) < 0.03  # binomial sd is 0.007
    assert torch.equal(hflip(images, 0.0, g), images)
    assert torch.equal(hflip(images, 1.0, g), images.flip(-1))


def test_hflip_generator_is_a_function_of_seed_and_step():
    images = torch.randint(0, 256, (256, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    flips = lambda seed, step: hflip(images, 0.5, hflip_generator(seed, step))  # noqa: E731
    assert torch.equal(flips(0, 7), flips(0, 7))  # resume: the same step flips the same images
    assert not torch.equal(flips(0, 7), flips(0, 8)) and not torch.equal(flips(0, 7), flips(1, 7))


@pytest.mark.parametrize("bad", [
    lambda: hflip(torch.zeros(2, 3, 4, 4), 0.5),
    lambda: hflip(torch.zeros(3, 4, 4, dtype=torch.uint8), 0.5),
    lambda: hflip(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), 1.5),
    lambda: make_colours(10, 4),
])
def test_bad_input_is_one_clear_error(bad):
    with pytest.raises(DiffvaeError):
        bad()
