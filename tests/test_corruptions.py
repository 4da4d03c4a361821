"""CIFAR-10-C's corruptions (Hendrycks & Dietterich 2019): the list, each corruption on a known
image (deterministic, growing with severity, the published strength), and glass blur against
make_cifar_c.py's algorithm written out pixel by pixel.

make_cifar_c.py's glass blur "swaps" pixels with ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on
numpy views, which copies (both cells receive x[h', w']). The reference below is that loop verbatim,
with ``np.random.randint`` replaced by a seeded Generator drawn in the same order.
"""

from __future__ import annotations

import typing

import numpy as np
import pytest
from conftest import PARAMS

from cnnvit.config.load import load_params, schema
from cnnvit.config.types import Corruption
from cnnvit.measure import corruptions as C

# CIFAR-10-C's corruptions as published (Hendrycks & Dietterich 2019, make_cifar_c.py), in its order
CIFAR10_C = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
             "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
             "jpeg_compression"]  # fmt: skip


def test_the_corruptions_are_cifar10_cs_less_frost_in_its_order_everywhere():
    """The functions, the config's allowed values, the schema's and the shipped params each hold
    CIFAR-10-C's list without frost (it blends photographs the original code shipped), in the
    published order, which also seeds each corruption (its index)."""
    published = [c for c in CIFAR10_C if c != "frost"]
    assert list(C.CORRUPTIONS) == published
    assert list(typing.get_args(Corruption)) == published
    assert schema()["properties"]["robustness"]["properties"]["corruptions"]["items"]["enum"] == published
    assert list(load_params(PARAMS).robustness.corruptions) == published


GREY = np.full((2, 32, 32, 3), 128, dtype=np.uint8)  # a flat mid-grey image, twice

EDGE = np.zeros((1, 32, 32, 3), dtype=np.uint8)
EDGE[:, :, 16:] = 255  # black left half, white right half


def mean_abs(a, b) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_every_corruption_is_deterministic_and_grows_with_severity(name):
    img = (np.random.default_rng(3).random((4, 32, 32, 3)) * 255).astype(np.uint8)
    out = [C.corrupt(img, name, s, seed=1) for s in C.SEVERITIES]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in out)
    assert np.array_equal(out[0], C.corrupt(img, name, 1, seed=1))  # the same seed, the same images
    changed = [mean_abs(o, img) for o in out]
    assert changed[0] > 0 and changed[4] >= 0.5 * max(changed)  # severity 5 is among the strongest


def test_gaussian_shot_and_impulse_noise_have_their_published_strength():
    big = np.full((20, 32, 32, 3), 128, dtype=np.uint8)
    noise = C.corrupt(big, "gaussian_noise", 5).astype(float) / 255 - 128 / 255
    assert noise.std() == pytest.approx(0.10, rel=0.05)  # c = 0.10 at severity 5
    shot = C.corrupt(big, "shot_noise", 5).astype(float) / 255
    p = 128 / 255
    assert shot.var() == pytest.approx(p / 50, rel=0.1)  # Poisson(50 p) / 50
    hit = C.corrupt(big, "impulse_noise", 5)
    assert np.isin(hit, [0, 255]).mean() == pytest.approx(0.07, abs=0.01)  # 7% of values, salt or pepper


@pytest.mark.parametrize("name", ["defocus_blur", "motion_blur", "zoom_blur", "glass_blur"])
def test_a_blur_leaves_a_flat_image_flat(name):
    out = C.corrupt(GREY, name, 5)
    assert np.abs(out.astype(int) - 128).max() <= 1
    assert mean_abs(C.corrupt(EDGE, name, 5), EDGE) > 1  # and does blur an edge


def test_contrast_and_brightness_by_hand():
    img = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    img[:, :16] = 200
    out = C.corrupt(img, "contrast", 5)  # c = 0.15 around the mean (100/255)
    hi, lo = 100 + (200 - 100) * 0.15, 100 - 100 * 0.15
    assert abs(int(out[0, 0, 0, 0]) - hi) <= 1 and abs(int(out[0, 31, 0, 0]) - lo) <= 1
    rgb = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1] = 100, 50  # HSV value 100/255; +0.3 scales every channel by (100/255+0.3)/(100/255)
    out = C.corrupt(rgb, "brightness", 5)
    scale = (100 / 255 + 0.3) / (100 / 255)
    assert abs(int(out[0, 0, 0, 0]) - 100 * scale) <= 1 and abs(int(out[0, 0, 0, 1]) - 50 * scale) <= 1
    assert int(out[0, 0, 0, 2]) == 0 and (C.corrupt(np.zeros_like(rgb), "brightness", 5) == 76).all()


def test_pixelate_and_jpeg_are_what_pil_does():
    from PIL import Image

    img = (np.random.default_rng(0).random((1, 32, 32, 3)) * 255).astype(np.uint8)
    box = Image.Resampling.BOX
    ref = np.asarray(Image.fromarray(img[0]).resize((20, 20), box).resize((32, 32), box))  # 32 * 0.65 = 20
    assert np.array_equal(C.corrupt(img, "pixelate", 5)[0], ref)
    assert mean_abs(C.corrupt(img, "jpeg_compression", 5), img) > mean_abs(C.corrupt(img, "jpeg_compression", 1), img)


def test_fog_snow_and_elastic_change_an_image_as_they_should():
    fog = C.corrupt(GREY, "fog", 5)
    assert fog.std() > 1  # a height map over the image
    snow = C.corrupt(np.zeros((2, 32, 32, 3), dtype=np.uint8), "snow", 5)
    assert (snow > 200).mean() > 0.01  # white flakes on black
    elastic = C.corrupt(EDGE, "elastic_transform", 5)
    assert elastic[0, :, 0].max() < 60 and elastic[0, :, 31].min() > 190  # the halves stay, the edge moves


# ----------------------------------------------------------------------------- glass blur, as published

SEVERITY_TABLE = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)]  # make_cifar_c's


def reference_shuffle(x: np.ndarray, max_delta: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """make_cifar_c.py's "locally shuffle pixels", one image after another, as it ran."""
    x = x.copy()
    for img in x:  # a view: the loop below writes into x
        for _ in range(iterations):
            for h in range(32 - max_delta, max_delta, -1):
                for w in range(32 - max_delta, max_delta, -1):
                    dx, dy = rng.integers(-max_delta, max_delta, size=(2,))
                    h_prime, w_prime = h + dy, w + dx
                    # swap
                    img[h, w], img[h_prime, w_prime] = img[h_prime, w_prime], img[h, w]
    return x


def reference_glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma, max_delta, iterations = SEVERITY_TABLE[severity - 1]
    img = (C._gaussian(x, sigma) * 255).astype(np.uint8)  # np.uint8(gaussian(x / 255., sigma) * 255)
    return C._gaussian(reference_shuffle(img, max_delta, iterations, rng) / 255.0, sigma)


FIXED = (np.random.default_rng(7).random((3, 32, 32, 3)) * 255).astype(np.uint8)  # one fixed batch


def test_the_published_swap_statement_copies():
    x = np.arange(2 * 2 * 3).reshape(2, 2, 3)
    x[1, 1], x[0, 0] = x[0, 0], x[1, 1]
    assert (x[1, 1] == [0, 1, 2]).all() and (x[0, 0] == [0, 1, 2]).all()  # both hold the old x[0, 0]


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_glass_blur_is_the_published_algorithm_exactly(severity):
    ours = C.glass_blur(FIXED / 255.0, severity, np.random.default_rng([3, severity]))
    ref = reference_glass_blur(FIXED / 255.0, severity, np.random.default_rng([3, severity]))
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("iterations", [1, 2])
def test_the_shuffle_matches_the_reference_on_every_chunking(iterations):
    ref = reference_shuffle(FIXED, 1, iterations, np.random.default_rng(11))
    for chunk in (1, 2, 256):  # chunks of images keep the draws in the reference's order
        ours = C._glass_shuffle(FIXED.copy(), iterations, np.random.default_rng(11), chunk=chunk)
        assert np.array_equal(ours, ref)
    assert not np.array_equal(ref, FIXED)


def displacement(iterations: int, n: int = 200) -> np.ndarray:
    """Per pixel, how far its final value travelled: shuffle an image of each pixel's own coordinates."""
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    origin = np.broadcast_to(np.stack([yy, xx], -1), (n, 32, 32, 2)).copy()
    moved = C._glass_shuffle(origin, iterations, np.random.default_rng(0))
    return np.hypot(moved[..., 0] - yy, moved[..., 1] - xx)


def test_pixels_move_at_most_one_diagonal_step_a_pass():
    one, two = displacement(1), displacement(2)
    assert one.max() == pytest.approx(np.sqrt(2)) and two.max() <= 2 * np.sqrt(2) + 1e-9
    # interior pixels copy from (0,0), (-1,0), (0,-1) or (-1,-1) with equal odds; 900 of the 1024 move
    assert one.mean() == pytest.approx((0 + 1 + 1 + np.sqrt(2)) / 4 * 900 / 1024, abs=0.01)
    assert (one[:, :2] == 0).all() and (one[:, :, :2] == 0).all()  # rows and columns 0-1 are never visited
