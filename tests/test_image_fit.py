"""compress/tasks/image_data.py: data.image_size (resize or center-crop) for every source, mean/std."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from compress.errors import SourceError
from compress.tasks.image_data import fit, load_images, normalise


@pytest.mark.parametrize("shape, size, how, expected", [
    ((2, 1, 8, 8), 32, "resize", (2, 1, 32, 32)),
    ((2, 3, 10, 20), [8, 8], "center-crop", (2, 3, 8, 8)),
    ((2, 3, 10, 20), [8, 8], "resize", (2, 3, 8, 8)),
    ((2, 1, 8, 8), None, "resize", (2, 1, 8, 8)),
])
def test_fit_brings_images_to_image_size(shape, size, how, expected):
    images = np.random.default_rng(0).random(shape, dtype=np.float32)

    assert fit(images, size, how).shape == expected


def test_fit_center_crop_keeps_the_middle_unstretched():
    images = np.zeros((1, 1, 4, 8), np.float32)
    images[..., 2:6] = 1.0  # a bright middle half

    crop, stretched = fit(images, 4, "center-crop"), fit(images, 4, "resize")

    assert crop.min() == pytest.approx(1.0)  # only the middle is left
    assert stretched.min() < 0.5  # the dark sides are squeezed in


@pytest.mark.parametrize("mean, std, expected", [(0.5, 0.25, [2.0, 2.0]), ([0.5, 0.0], [0.25, 1.0], [2.0, 1.0]),
                                                  (None, None, [1.0, 1.0])])
def test_normalise_per_channel(mean, std, expected):
    images = np.ones((1, 2, 2, 2), np.float32)

    assert normalise(images, mean, std, "s")[0, :, 0, 0].tolist() == expected


def test_normalise_refuses_a_wrong_number_of_values():
    with pytest.raises(SourceError, match="3 values for 2-channel"):
        normalise(np.ones((1, 2, 2, 2), np.float32), [0.1, 0.2, 0.3], None, "s")


def test_load_images_upsamples_and_normalises_sklearn_digits():
    cfg = SimpleNamespace(source="sklearn:digits", labels=None, seed=0, eval_size=50, train_limit=100,
                          image_size=16, image_fit="resize", mean=[0.5], std=[0.5])

    data = load_images(cfg)

    assert data.train.images.shape == (100, 1, 16, 16) and data.eval.images.shape == (50, 1, 16, 16)
    assert data.train.images.min() >= -1.01 and data.train.images.max() <= 1.01 and data.train.images.min() < -0.9


@pytest.mark.parametrize("extra, error", [
    ({"image_fit": "center-crop", "mean": [0.5], "std": 0.5}, None),
    ({"image_fit": "squash"}, "image_fit"),
    ({"std": 0}, "std"),
])
def test_data_config_image_keys(extra, error):
    from pydantic import ValidationError

    from compress.recipe import DataConfig

    if error:
        with pytest.raises(ValidationError, match=error):
            DataConfig(source="sklearn:digits", **extra)
    else:
        data = load_images(DataConfig(source="sklearn:digits", image_size=12, eval_size=20, train_limit=10, **extra))
        assert data.eval.images.shape == (20, 1, 12, 12) and data.eval.images.min() < 0
