"""Mean attention distance per head and layer (Dosovitskiy et al. 2021, Fig. 7), in input pixels.

    maps = attention_maps(model, images)       # layer -> N x heads x tokens x tokens (softmax rows)
    mean_distance(maps[0], grid=8, cell=4)     # heads: the pixel distance each head attends over

For a patch query, the distance is the sum, weighted by its attention, of the pixel distance from
its patch's centre to every patch's centre; the mean over patch queries and images is the head's
distance. The convention is the ViT paper's (its Appendix D.7: distances "weighted by the
attention weight"): the class token's row and column are left out and the weights are *not*
renormalised, so a query's attention to the class token adds nothing (it counts as distance 0),
and a head that attends mostly to the class token scores low. A uniform attention over an
8 x 8 grid of 4-pixel cells plus the class token scores 64/65 of the patch-to-patch mean distance,
16.29 pixels (16.55 if it were renormalised over the patches); a head that looks locally scores a
few pixels.

The distance says where attention reaches, not what a token already sees: a ViT token is its own
4 x 4 patch, while a hybrid token (one per 4 x 4 cell of the stem's output) already sees the stem's
receptive field, 9 x 9 pixels for three 3 x 3 convolutions at strides 1, 2, 2
(``CnnViT.receptive_field`` in :mod:`cnnvit.models.vit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn


def token_centres(grid: int, cell: float) -> np.ndarray:
    """(grid*grid) x 2: the pixel centre of each patch token, row by row."""
    idx = (np.arange(grid) + 0.5) * cell
    yy, xx = np.meshgrid(idx, idx, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def mean_distance(attn: np.ndarray, grid: int, cell: float, prefix_tokens: int = 1) -> np.ndarray:
    """Mean attention distance (pixels) per head, from attention probabilities of shape
    N x heads x T x T whose first ``prefix_tokens`` tokens are not patches (the class token).
    Not renormalised after the class token is dropped (the module's docstring says why)."""
    patch = attn[:, :, prefix_tokens:, prefix_tokens:]
    centres = token_centres(grid, cell)
    dist = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1))  # T x T
    per_query = (patch * dist).sum(-1)  # N x heads x queries
    return per_query.mean(axis=(0, 2))


def attention_maps(model: nn.Module, images: torch.Tensor) -> list[np.ndarray]:
    """The attention probabilities of every block of a timm VisionTransformer on ``images``
    (normalised as the model was trained), recomputed from each block's q and k: timm's fused
    attention never forms them itself."""
    import torch

    blocks = list(model.blocks)  # type: ignore[arg-type]
    captured: list[torch.Tensor] = []

    def hook(attn_module, _inputs, output):
        b, n, _ = output.shape
        qkv = output.reshape(b, n, 3, attn_module.num_heads, attn_module.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn_module.q_norm(qkv[0]), attn_module.k_norm(qkv[1])
        captured.append(((q * attn_module.scale) @ k.transpose(-2, -1)).softmax(-1).float())

    handles = []
    for blk in blocks:
        attn = blk.attn
        handles.append(attn.qkv.register_forward_hook(lambda m, i, o, a=attn: hook(a, i, o)))
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return [c.cpu().numpy() for c in captured]
