"""Create a timm model, with pretrained weights when the model entry names some.

``pretrained:`` is a local file (``.safetensors`` preferred; ``.pth``/``.pt``/``.bin`` holding a
state dict) or a timm hub name (``hf-hub:timm/vit_small_patch16_224.augreg_in21k``). Loading goes
through timm's own machinery (``pretrained_cfg_overlay``): the family's checkpoint filter resamples
a ViT's patch and position embeddings to this model's patch size and token grid, and the
classifier is re-initialised for 10 classes. A local ``.pth`` is read with
``torch.load(weights_only=True)`` first, so a pickle that would run code is refused before timm
sees it. :func:`weights_source` gives the provenance (file, sha256) of what a spec loads.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import timm
import torch

from cnnvit.dataset import NUM_CLASSES
from cnnvit.errors import CnnvitError, first_line, refused_pickle
from cnnvit.models import ArchSpec

HUB_PREFIX = "hf-hub:"
PICKLED = {".pth", ".pt", ".bin"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def weights_source(name: str) -> dict:
    """What ``pretrained: name`` is: ``{"source": ..., "sha256": ...}`` (sha256 of a local file)."""
    if name.startswith(HUB_PREFIX):
        return {"source": name, "sha256": None}
    path = Path(name).expanduser()
    if not path.is_file():
        raise CnnvitError(f"pretrained weights {path} not found: fix the model's pretrained entry")
    return {"source": str(path.resolve()), "sha256": _sha256(path)}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file, without running any code the file might carry."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        sd: Any
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CnnvitError(f"pretrained weights {path}: not a readable safetensors file ({exc})") from None
    elif suffix in PICKLED:
        try:
            with warnings.catch_warnings():  # torch warns of the pickle protocol; the error line says it all
                warnings.simplefilter("ignore")
                sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CnnvitError(
                f"refusing to load pretrained weights {path}: it holds more than tensors ({refused_pickle(exc)}); "
                "nothing in it was run: use a .safetensors file or torch.save(model.state_dict())"
            ) from None
        except (RuntimeError, OSError, EOFError) as exc:
            raise CnnvitError(f"pretrained weights {path}: not a readable checkpoint ({exc})") from None
    else:
        raise CnnvitError(f"pretrained weights {path}: unknown format {suffix!r}; use .safetensors, .pth or .pt")
    for key in ("state_dict", "model"):  # common wrappers around the weights
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CnnvitError(f"pretrained weights {path}: not a state dict (name -> tensor): save model.state_dict()")
    return timm.models.clean_state_dict(sd)


def _first_mismatch(exc: Exception) -> str:
    text = str(exc)
    m = re.search(r"size mismatch for ([\w.]+)", text) or re.search(r'key\(s\) in state_dict: "([^"]+)"', text)
    return m.group(1) if m else (text.strip().splitlines() or [type(exc).__name__])[-1][:160]


def create(variant: str, spec: ArchSpec, **kwargs) -> torch.nn.Module:
    """``timm.create_model(variant, **kwargs)`` for 10 classes, loading ``spec.pretrained`` if set."""
    kwargs["num_classes"] = NUM_CLASSES
    if not spec.pretrained:
        return timm.create_model(variant, pretrained=False, **kwargs)
    name = spec.pretrained
    overlay: dict[str, Any]
    if name.startswith(HUB_PREFIX):
        overlay = {"source": "hf-hub", "hf_hub_id": name[len(HUB_PREFIX) :]}
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise CnnvitError(f"pretrained weights {path} not found: fix the model's pretrained entry")
        overlay = {"state_dict": read_state_dict(path)}
    try:
        return timm.create_model(variant, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (RuntimeError, KeyError, ValueError) as exc:
        if "state_dict" not in overlay:
            raise
        raise CnnvitError(
            f"pretrained weights {name} do not fit arch {spec.arch}: first mismatching key "
            f"{_first_mismatch(exc)}: use weights of the same architecture and sizes"
        ) from None
    except Exception as exc:  # huggingface_hub's offline / not-found errors have no common base
        if os.environ.get("HF_HUB_OFFLINE") or "hub" in type(exc).__module__ or isinstance(exc, OSError):
            reason = first_line(exc, 160)
            raise CnnvitError(
                f"cannot fetch {name} ({type(exc).__name__}: {reason}): no network? download it once and "
                "set pretrained to the local .safetensors file"
            ) from None
        raise
