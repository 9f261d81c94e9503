"""The 2D papers' own volume inference, the baseline of the benchmark and of the tests.

TransUNet's ``test_single_volume`` (which Swin-Unet and MT-UNet reuse) predicts a volume one axial slice at a
time: SciPy cubic zoom of the slice to the network size, the network, argmax there, nearest zoom of the labels
back to the slice size. The bundles run the same steps in batches (``common.slicewise``); with
``--slice_resize labels`` their labels equal this loop's exactly (tested). :func:`per_slice` turns a bundle's
2D network into this loop, same weights and settings, so the benchmark times the papers' procedure through the
bundle's own transforms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..slicewise import SliceWiseMixin

__all__ = ["per_slice", "per_slice_labels"]


def per_slice_labels(net: SliceWiseMixin, vol: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The papers' loop on one volume (C, X, Y, Z): the (X, Y, Z) int64 label map and the number of classes."""
    slices = vol.permute(3, 0, 1, 2)  # (Z, C, X, Y)
    z, _, sx, sy = slices.shape
    labels = np.zeros((sx, sy, z), dtype=np.int64)
    n_classes = 1
    arr = slices.detach().float().cpu().numpy()
    roi = net.slice_roi
    for i in range(z):
        zoomed = np.stack([ndimage.zoom(ch, (roi[0] / sx, roi[1] / sy), order=3) for ch in arr[i]])
        logits = net.slice_forward(torch.from_numpy(zoomed).float().unsqueeze(0).to(vol.device)).float()
        n_classes = logits.shape[1]
        pred = torch.argmax(torch.softmax(logits, dim=1), dim=1)[0].cpu().numpy()
        if pred.shape != (sx, sy):
            pred = ndimage.zoom(pred, (sx / roi[0], sy / roi[1]), order=0)
        labels[:, :, i] = pred
    return torch.from_numpy(labels).to(vol.device), n_classes


class _PerSliceMixin:
    def _volume(self, vol: torch.Tensor) -> torch.Tensor:
        labels, n_classes = per_slice_labels(self, vol)
        if self.slice_output == "labels":
            return labels[None].float()
        return F.one_hot(labels, n_classes).permute(3, 0, 1, 2).float()  # one-hot scores: the loop keeps no logits


_CLASSES: dict[type, type] = {}


def per_slice(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` (a 2D bundle's network, see ``common.slicewise.slicewise_network``) predicting volumes with the
    papers' loop instead of in batches; changed in place and returned. 2D inputs still go to the 2D network."""
    if not isinstance(net, SliceWiseMixin):
        raise TypeError(f"per_slice takes a slice-wise 2D network, got {type(net).__name__}")
    if isinstance(net, _PerSliceMixin):
        return net
    cls = type(net)
    if cls not in _CLASSES:
        name = f"PerSlice{cls.__name__}"
        _CLASSES[cls] = type(name, (_PerSliceMixin, cls), {"__module__": __name__})
        globals()[name] = _CLASSES[cls]
    net.__class__ = _CLASSES[cls]
    return net
