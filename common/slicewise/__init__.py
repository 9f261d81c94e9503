"""2D networks on 3D volumes: axial-slice training data and slice-wise inference, shared by the 2D bundles.

The 2D papers (TransUNet, Swin-Unet, MT-UNet) train on axial slices and evaluate by predicting every slice
of a volume and stacking the results. Three parts:

* :mod:`.training`: :func:`slice_preprocessing`, the volume-level preprocessing of the 2D bundles (load, check,
  orientation RAS so the last axis is the axial one, HU window [-125, 275] -> [0, 1] clipped as the papers; no
  resampling: slices are resized in-plane to the network size, as in the papers; invertible), and
  :class:`SliceDataset`, axial training samples from volumes resized in-plane once per volume (cached), with
  per-slice weights for foreground-aware sampling; the papers' augmentation (:class:`PaperSliceAugmentd`) is
  the dataset's ``transform`` in ``train.json``.
* :mod:`.resize`: the papers' cubic zoom as banded matrix products, the bilinear return of the logits with the
  argmax computed only where it can change, nearest zoom with scipy's corner alignment.
* :mod:`.network`: :func:`slicewise_network`, the 2D network as a 3D-volume model (:class:`SliceWiseMixin`): 2D
  slices in training, whole volumes in validation and inference, sent through the network in batches of slices.
  The output is a tensor on the input's grid, (B, classes, X, Y, Z) scores or, with ``output="labels"`` (the
  bundles' inference), the (B, 1, X, Y, Z) label map computed batch by batch, so the bundles' post-processing
  (inversion to the original grid, writing) is that of the 3D bundles, and MONAI Label and the bundle tools see
  a 3D model. The papers' own one-slice-at-a-time loop is the benchmark's baseline, ``common.tools.per_slice``.

MONAI's ``SliceInferer`` runs a 2D network over 3D data but pads instead of resizing, so it cannot reproduce
the papers' 224 x 224 resizing; and an inferer outside the network would leave the bundle's ``network_def``
a 2D model, which MONAI Label then serves as a 2D model. Hence the volume logic lives with the network.
"""

from .network import SliceWiseMixin, default_slice_batch, slicewise_class, slicewise_network
from .resize import (
    argmax_channels,
    bilinear_argmax,
    compact_argmax,
    cubic_zoom_bands,
    cubic_zoom_matrix,
    resize_slices,
    zoom_axial_slices,
)
from .training import PAPER_HU_WINDOW, PaperSliceAugmentd, SliceDataset, slice_preprocessing, slice_weights

__all__ = [
    "PAPER_HU_WINDOW",
    "slice_preprocessing",
    "PaperSliceAugmentd",
    "SliceDataset",
    "slice_weights",
    "SliceWiseMixin",
    "slicewise_class",
    "slicewise_network",
    "default_slice_batch",
    "argmax_channels",
    "compact_argmax",
    "bilinear_argmax",
    "cubic_zoom_bands",
    "cubic_zoom_matrix",
    "resize_slices",
    "zoom_axial_slices",
]
