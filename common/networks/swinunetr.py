"""Loading weights into MONAI's ``SwinUNETR`` (the network itself is MONAI's own).

Two layouts load through :func:`common.weights.load_weights`:

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

import re
from collections.abc import Mapping

import torch

from ..weights import Conversion

__all__ = ["CONVERTERS", "convert_ssl_encoder", "SSL_IGNORED_PREFIXES"]

# heads of the self-supervised pre-training network that the segmentation network does not have
SSL_IGNORED_PREFIXES = (
    "rotation_head.",
    "rotation_pre.",
    "contrastive_head.",
    "contrastive_pre.",
    "convTrans3d.",
    "conv.",
    "norm.",
)


def _bare(key: str) -> str:
    return re.sub(r"^(module\.|swin_vit\.|swinViT\.)", "", key)


def convert_ssl_encoder(state: Mapping[str, object], model: torch.nn.Module) -> Conversion | None:
    """The self-supervised encoder of the SwinUNETR paper (``model_swinvit.pt``) as our ``swinViT.*`` tensors, as
    MONAI's ``SwinUNETR.load_from`` reads it (``fc1``/``fc2`` -> ``linear1``/``linear2``); ``None`` for another
    file (a full SwinUNETR state dict is this network's own layout). The pre-training heads and the final norm are
    ignored by design; the decoder keeps its initialisation."""
    if any(_bare(k).startswith(("encoder1.", "decoder1.", "out.")) for k in state):
        return None
    if not any(_bare(k).startswith(("patch_embed.", "layers1.")) for k in state):
        return None
    tensors: dict[str, torch.Tensor] = {}
    ignored: dict[str, str] = {}
    for key, value in state.items():
        bare = _bare(key)
        if bare.startswith(SSL_IGNORED_PREFIXES):
            ignored[key] = "self-supervised pre-training head (not part of the segmentation network)"
            continue
        target = "swinViT." + bare.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
        tensors[target] = torch.as_tensor(value)
    # every encoder parameter must receive a value; buffers the file lacks (index tables) stay as built
    required = [n for n, _ in model.named_parameters() if n.startswith("swinViT.")]
    return Conversion("SwinUNETR self-supervised encoder", tensors, ignored=ignored, partial=True, required=required)


CONVERTERS = (convert_ssl_encoder,)
