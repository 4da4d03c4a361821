"""A trained model's weights as safetensors: what the evaluation stages load, and nothing else.

    save_weights("results/runs/vit-paper-s0/weights.safetensors", model.state_dict(), {"epoch": "7"})
    meta = load_weights(model, path)     # strict: every key, every shape, or one error naming the fix

Safetensors holds tensors and a string-to-string header only, so loading cannot run code. The
same weights and metadata always give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from cnnvit.errors import CnnvitError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The same weights and metadata give the same bytes: safetensors writes its metadata in a
    hash map's order, which differs from one call to the next, so the header is written here with
    the metadata sorted (a resumed run's file is then byte-identical to an uninterrupted one's)."""
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    header.pop("__metadata__", None)
    meta = {str(k): str(v) for k, v in sorted(metadata.items())}
    text = json.dumps({"__metadata__": meta, **header} if meta else header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the tensor data to 8 bytes
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(memoryview(blob)[8 + size :])


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The header's metadata of a weights file (which run and epoch it holds), without its tensors."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CnnvitError(f"{path} not found: train the run first (its weights are written when it finishes)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CnnvitError(
            f"{path} is not a safetensors file ({first_line(exc, 80)}): delete it and train the run again"
        ) from None


def load_weights(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load ``path`` into ``model`` (every key and shape must match); returns the file's metadata."""
    from safetensors.torch import load_file

    meta = weights_metadata(path)
    state = load_file(str(path))
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or wrong:
        what = (
            f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, the model's {tuple(own[wrong[0]].shape)}"
            if wrong
            else f"{'missing ' + missing[0] if missing else 'unexpected ' + extra[0]}"
        )
        raise CnnvitError(
            f"{path} does not fit this model ({what}): it was trained with other params; train the run again"
        )
    model.load_state_dict(state)
    return meta
