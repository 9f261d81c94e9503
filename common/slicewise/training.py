"""Axial 2D training data from 3D volumes, for the 2D bundles: the volume preprocessing, the papers' slice
augmentation, foreground-aware slice weights and the cached slice dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, Orientationd, Randomizable
from monai.utils import ensure_tuple
from scipy import ndimage
from torch.utils.data import Dataset

from ..labels import BTCV13, BTCV_NUM_CLASSES
from ..transforms import HUWindowd, label_map_transform, load_transforms
from .resize import resize_slices, zoom_axial_slices

__all__ = ["PAPER_HU_WINDOW", "slice_preprocessing", "PaperSliceAugmentd", "slice_weights", "SliceDataset"]

PAPER_HU_WINDOW = (-125.0, 275.0)


def slice_preprocessing(
    keys: KeysCollection = ("image", "label"),
    hu_window: Sequence[float] = PAPER_HU_WINDOW,
    label_map: str = BTCV13,
) -> Compose:
    """Volume preprocessing of the 2D bundles: load, check, RAS (axial = last axis), HU window to [0, 1].

    The arrays keep the file's type (int16 for most CT) until the HU window makes the image float32 (the same
    values as converting first: the window computes in float32 either way); labels stay integers.
    """
    keys = ensure_tuple(keys)
    xs = load_transforms(keys, dtype=None)
    xs += [
        Orientationd(keys, axcodes="RAS", labels=None, allow_missing_keys=True),
        HUWindowd(keys[0], a_min=float(hu_window[0]), a_max=float(hu_window[1]), b_min=0.0, b_max=1.0, clip=True),
    ]
    xs += label_map_transform(label_map)
    return Compose(xs)


class PaperSliceAugmentd(Randomizable, MapTransform):
    """The 2D papers' training augmentation (TransUNet's ``RandomGenerator``), on (C, H, W) slices.

    With probability 1/2: rotate by k * 90 degrees (k uniform in 0..3) and flip along a random in-plane
    axis. Otherwise, with probability 1/2: rotate by an integer angle uniform in [-20, 20] degrees with
    nearest-neighbour interpolation (order 0, as the papers do for both image and label), keeping the size.
    Otherwise: unchanged.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), max_angle: int = 20):
        MapTransform.__init__(self, keys)
        self.max_angle = int(max_angle)
        self._op, self._k, self._axis, self._angle = 0, 0, 0, 0

    def randomize(self, data=None) -> None:
        if self.R.random_sample() > 0.5:
            self._op, self._k, self._axis = 1, int(self.R.randint(0, 4)), int(self.R.randint(0, 2))
        elif self.R.random_sample() > 0.5:
            self._op, self._angle = 2, int(self.R.randint(-self.max_angle, self.max_angle))
        else:
            self._op = 0

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if self._op == 0:
            return d
        for key in self.key_iterator(d):
            x = d[key]
            arr = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if self._op == 1:
                arr = np.flip(np.rot90(arr, self._k, axes=(1, 2)), axis=1 + self._axis)
            else:
                arr = ndimage.rotate(arr, self._angle, axes=(1, 2), order=0, reshape=False)
            d[key] = torch.from_numpy(np.ascontiguousarray(arr))
        return d


def slice_weights(slice_labels: Sequence[np.ndarray], num_classes: int, fg_prob: float = 0.5) -> np.ndarray:
    """Sampling weight of every slice for foreground-aware sampling.

    Each draw takes, with probability ``1 - fg_prob``, a slice uniformly at random and, with probability
    ``fg_prob``, a foreground class uniformly among the classes present in the data and then a slice
    containing it uniformly; so every organ, however small, is seen in about ``fg_prob / classes`` of the
    draws. ``slice_labels[s]`` lists the class ids present in slice ``s``. ``fg_prob = 0`` is uniform sampling
    over slices (the papers). Returns probabilities summing to 1.
    """
    n = len(slice_labels)
    w = np.full(n, (1.0 - fg_prob) / n)
    counts = np.zeros(num_classes, dtype=np.int64)
    for present in slice_labels:
        counts[present] += 1
    classes = [c for c in range(1, num_classes) if counts[c] > 0]
    if fg_prob > 0 and classes:
        for s, present in enumerate(slice_labels):
            w[s] += sum(fg_prob / (len(classes) * counts[c]) for c in present if c > 0 and counts[c] > 0)
    else:
        w[:] = 1.0 / n
    return w / w.sum()


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class SliceDataset(Dataset):
    """Axial 2D training samples from 3D volumes, cached once per volume at the network's in-plane size.

    Args:
        data: datalist items (``image``, ``label`` paths).
        transform: volume-level deterministic preprocessing (see :func:`slice_preprocessing`).
        img_size: in-plane network input size (H, W); every volume's slices are resized to it once (image
            cubic as the papers' ``zoom(order=3)``, clipped to [0, 1]; label nearest).
        augment: a transform applied to each drawn sample (``{"image", "label"}``, each (1, H, W)): in the 2D
            bundles' ``train.json``, :class:`PaperSliceAugmentd`; ``None``: samples as cached.
        fg_prob: foreground-aware sampling strength (see :func:`slice_weights`), used by :meth:`sampler`.
        num_classes: number of label classes after the transform's label map.
        progress: show a progress bar while caching.

    ``len(dataset)`` is the number of slices; item ``i`` is slice ``i`` as ``{"image": (1, H, W) float32,
    "label": (1, H, W) float32}``. Use :meth:`sampler` for the weighted (foreground-aware) order.
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Callable,
        img_size: Sequence[int] = (224, 224),
        augment: Callable[[dict], dict] | None = None,
        fg_prob: float = 0.5,
        num_classes: int = BTCV_NUM_CLASSES,
        progress: bool = True,
    ):
        self.img_size = tuple(int(s) for s in ensure_tuple(img_size))
        if len(self.img_size) == 1:
            self.img_size = self.img_size * 2
        self.num_classes = int(num_classes)
        self.fg_prob = float(fg_prob)
        self.augment = augment
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.index: list[tuple[int, int]] = []
        present: list[np.ndarray] = []
        items = list(data)
        self.data = items  # the cases, as MONAI's datasets keep them
        it = items
        if progress:
            from tqdm import tqdm

            it = tqdm(items, desc="caching volumes as slices", unit="volume")
        for v, item in enumerate(it):
            d = transform(item)
            img = _plain(d["image"]).float()  # (1, X, Y, Z), no metadata: slices are collated as plain tensors
            lab = _plain(d["label"]).float()
            lab_s = lab[0].permute(2, 0, 1).unsqueeze(1)  # (Z, 1, X, Y)
            img_s = zoom_axial_slices(img[:1], self.img_size).clamp_(0.0, 1.0)
            lab_s = resize_slices(lab_s, self.img_size, "nearest")
            self.images.append(img_s.contiguous())
            self.labels.append(lab_s.to(torch.uint8).contiguous())
            for z in range(img_s.shape[0]):
                self.index.append((v, z))
                present.append(np.unique(self.labels[-1][z].numpy()).astype(np.int64))
        self._present = present
        self.weights = slice_weights(present, self.num_classes, self.fg_prob)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        v, z = self.index[i]
        d = {"image": self.images[v][z], "label": self.labels[v][z].float()}
        if self.augment is not None:
            d = self.augment(d)
        return d

    def sampler(self, num_samples: int | None = None, generator: torch.Generator | None = None):
        """A ``WeightedRandomSampler`` drawing ``num_samples`` (default: one epoch = all slices) by weight."""
        return torch.utils.data.WeightedRandomSampler(
            torch.as_tensor(self.weights, dtype=torch.double),
            num_samples or len(self),
            replacement=True,
            generator=generator,
        )
