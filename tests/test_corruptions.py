"""Glass blur against CIFAR-10-C's published algorithm, written out pixel by pixel.

make_cifar_c.py's glass blur "swaps" pixels with ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on
numpy views, which copies (both cells receive x[h', w']). The reference below is that loop verbatim,
with ``np.random.randint`` replaced by a seeded Generator drawn in the same order.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnvit.measure import corruptions as C

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
