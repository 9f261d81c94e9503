"""Loading weights into MONAI's ``SwinUNETR`` (the network itself is MONAI's own).

Two layouts are accepted by :func:`load_swinunetr_weights`:

* a full MONAI ``SwinUNETR`` state dict (``swinViT.*``, ``encoder*``, ``decoder*``, ``out.*``), bare or
  under ``"state_dict"`` / ``"model"``, optionally with the ``module.`` prefix of a DDP-saved model
  (e.g. a fine-tuned BTCV checkpoint of MONAI's research code or a bundle's ``model.pt``): loaded strictly;
* the self-supervised pretrained encoder of the SwinUNETR paper (``model_swinvit.pt``): ``"state_dict"``
  with keys ``module.patch_embed.*``, ``module.layers{1-4}.0.blocks.{j}.*`` (MLP named ``fc1``/``fc2``),
  ``module.layers{1-4}.0.downsample.*``, plus the pre-training heads. The encoder keys are mapped onto
  ``swinViT.*`` exactly as MONAI's ``SwinUNETR.load_from`` reads them (``fc1``/``fc2`` ->
  ``linear1``/``linear2``); the pre-training heads and the final norm, which the segmentation network does
  not have, are reported as ignored by design. MONAI's research script instead renames ``module.`` to
  ``swinViT.`` and loads with ``strict=False``, which silently skips every MLP weight (``fc1`` vs
  ``linear1``); here nothing is skipped silently.

Every other mismatch (an unknown key, an encoder parameter left without a value, a shape that does not fit)
raises one :class:`~common.errors.InputError` listing all of them, and nothing is copied.
"""

from __future__ import annotations

import os
import re

import torch

from ..errors import InputError

__all__ = ["load_swinunetr_weights", "SSL_IGNORED_PREFIXES"]

# heads of the self-supervised pre-training network that the segmentation network does not have
SSL_IGNORED_PREFIXES = ("rotation_head.", "rotation_pre.", "contrastive_head.", "contrastive_pre.", "convTrans3d.",
                        "conv.", "norm.")  # fmt: skip


def _unwrap(obj) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "network"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj
    raise InputError(f"not a state dict: {type(obj).__name__}")


def _ssl_to_monai(key: str) -> str:
    key = re.sub(r"^(module\.|swin_vit\.|swinViT\.)", "", key)
    key = key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
    return "swinViT." + key


def load_swinunetr_weights(model: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Load a SwinUNETR state dict or the self-supervised encoder into ``model``; return a report.

    Report keys: ``layout`` (``"full"`` or ``"ssl_encoder"``), ``loaded`` (our parameter names that received
    a value), ``ignored`` (checkpoint keys ignored by design), ``num_tensors``, ``not_loaded`` (our parameters
    left as initialised: the decoder for the encoder-only layout).
    """
    path = str(path)
    try:
        state = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e})") from e
    ours = model.state_dict()
    keys = list(state)
    stripped = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    is_full = any(k.startswith(("encoder1.", "decoder1.", "out.")) for k in stripped)
    problems: list[str] = []
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    if is_full:
        layout = "full"
        for k, v in stripped.items():
            if k not in ours:
                problems.append(f"unexpected key {k!r}")
            else:
                mapped[k] = v
        required = set(ours)
    else:
        layout = "ssl_encoder"
        for k in keys:
            bare = re.sub(r"^(module\.|swin_vit\.|swinViT\.)", "", k)
            if bare.startswith(SSL_IGNORED_PREFIXES):
                ignored.append(k)
                continue
            target = _ssl_to_monai(k)
            if target not in ours:
                problems.append(f"unexpected key {k!r} (would map to {target!r})")
            else:
                mapped[target] = state[k]
        # every encoder parameter must receive a value; buffers the file lacks (index tables) stay as built
        params = {n for n, _ in model.named_parameters()}
        required = {k for k in ours if k.startswith("swinViT.") and k in params}
    for k in sorted(required - set(mapped)):
        problems.append(f"missing key for {k!r}")
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(ours[k].shape):
            problems.append(f"shape mismatch for {k!r}: checkpoint {tuple(v.shape)}, model {tuple(ours[k].shape)}")
    if problems:
        raise InputError(
            [f"{path}: {p}" for p in problems[:50]] + ([f"{path}: ... {len(problems) - 50} more"] if len(problems) > 50 else []),
            hint="the file is neither a MONAI SwinUNETR state dict nor the SwinUNETR self-supervised encoder "
            f"for this configuration ({layout} layout assumed); nothing was loaded",
        )
    with torch.no_grad():
        for k, v in mapped.items():
            ours[k].copy_(v)
    model.load_state_dict(ours)
    return {
        "layout": layout,
        "loaded": sorted(mapped),
        "ignored": sorted(ignored),
        "num_tensors": len(mapped),
        "not_loaded": sorted(k for k in ours if k not in mapped),
    }
