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

import contextlib
import logging
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import timm
import torch

from cnnvit.cifar import NUM_CLASSES
from cnnvit.errors import CnnvitError, first_line, refused_pickle
from cnnvit.files import file_sha256
from cnnvit.models.registry import ArchSpec

HUB_PREFIX = "hf-hub:"
PICKLED = {".pth", ".pt", ".bin"}


def weights_source(name: str) -> dict:
    """What ``pretrained: name`` is: ``{"source": ..., "sha256": ...}`` (sha256 of a local file)."""
    if name.startswith(HUB_PREFIX):
        return {"source": name, "sha256": None}
    path = Path(name).expanduser()
    if not path.is_file():
        raise CnnvitError(f"pretrained weights {path} not found: fix the model's pretrained entry")
    return {"source": str(path.resolve()), "sha256": file_sha256(path)}


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
    refuse_non_finite(sd, str(path))
    return timm.models.clean_state_dict(sd)


def refuse_non_finite(state: dict[str, torch.Tensor], name: str) -> None:
    """Weights holding NaN or an infinity (saved from a diverged run, or damaged) would make every
    step NaN: say so before training, not as a diverged run."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CnnvitError(
            f"pretrained weights {name} hold NaN or infinite values (in {', '.join(bad[:3])}{more}): they were saved "
            "from a run that diverged, or are damaged; use other weights"
        )


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


@contextlib.contextmanager
def _loads_recorded(into: list) -> Any:
    """Record what ``load_state_dict`` reports while timm loads pretrained weights: timm loads
    non-strictly whenever it re-initialises the classifier, and only logs the keys it skipped."""
    real = torch.nn.Module.load_state_dict

    def recording(self, state_dict, strict=True, assign=False):
        result = real(self, state_dict, strict=strict, assign=assign)
        into.append((self, result))
        return result

    builder = logging.getLogger("timm.models._builder")  # its page-long key lists: the error names the first few
    level = builder.level
    torch.nn.Module.load_state_dict = recording  # type: ignore[method-assign]
    builder.setLevel(logging.ERROR)
    try:
        yield
    finally:
        torch.nn.Module.load_state_dict = real  # type: ignore[method-assign]
        builder.setLevel(level)


def check_fit(model: torch.nn.Module, loads: list, name: str, arch: str) -> None:
    """Every key of the weights went into the model, and every key of the model came from them
    but the classifier (re-initialised for 10 classes): else one line naming the first few."""
    results = [r for m, r in loads if m is model]
    if not results:
        raise CnnvitError(f"pretrained weights {name}: nothing was loaded into arch {arch}: use weights of that arch")
    cfg: dict = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier")
    heads = (head,) if isinstance(head, str) else tuple(head or ())
    fresh = {f"{h}.{p}" for h in heads for p in ("weight", "bias")}
    missing = [k for k in results[-1].missing_keys if k not in fresh]
    unexpected = list(results[-1].unexpected_keys)
    if missing or unexpected:
        parts = [f"missing {_names(missing)}"] * bool(missing) + [f"unexpected {_names(unexpected)}"] * bool(unexpected)
        raise CnnvitError(
            f"pretrained weights {name} do not fit arch {arch} ({'; '.join(parts)}): use weights of the same "
            "architecture and sizes"
        )


def _first_mismatch(exc: Exception) -> str:
    if isinstance(exc, KeyError):  # a family's checkpoint filter looked for a key these weights lack
        return f"the arch's loader found no key {exc.args[0] if exc.args else ''}"
    text = str(exc)
    sizes = re.findall(r"size mismatch for ([\w.]+)", text)
    if sizes:
        return f"shapes differ for {_names(sizes)}"
    m = re.search(r'key\(s\) in state_dict: "([^"]+)"', text)
    return f"first mismatching key {m.group(1)}" if m else (text.strip().splitlines() or [type(exc).__name__])[-1][:160]


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
    loads: list = []
    try:
        with _loads_recorded(loads):
            model = timm.create_model(variant, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (RuntimeError, KeyError, ValueError) as exc:
        if "state_dict" not in overlay:
            raise
        raise CnnvitError(
            f"pretrained weights {name} do not fit arch {spec.arch} ({_first_mismatch(exc)}): use weights of the "
            "same architecture and sizes"
        ) from None
    except Exception as exc:  # huggingface_hub's offline / not-found errors have no common base
        if os.environ.get("HF_HUB_OFFLINE") or "hub" in type(exc).__module__ or isinstance(exc, OSError):
            reason = first_line(exc, 160)
            raise CnnvitError(
                f"cannot fetch {name} ({type(exc).__name__}: {reason}): no network? download it once and "
                "set pretrained to the local .safetensors file"
            ) from None
        raise
    check_fit(model, loads, name, spec.arch)
    refuse_non_finite(model.state_dict(), name)  # hub weights are checked once loaded
    return model
