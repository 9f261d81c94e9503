"""Transform factories shared by every bundle, so a change lands once.

* :func:`load_transforms`: read NIfTI (nibabel) or DICOM series / ``.mha`` / ``.nrrd`` (SimpleITK),
  channel first, and :class:`CheckInputd` (clear errors for bad input).
* :func:`btcv_preprocessing`: the BTCV 3D preprocessing of UNETR/SwinUNETR: orientation RAS, spacing
  1.5 x 1.5 x 2.0 mm, HU window [-175, 250] -> [0, 1] clipped, crop foreground (all invertible).
* :func:`btcv_train_augmentation`: RandCropByPosNegLabel 96^3 (pos 1, neg 1, 4 samples), random flips on
  the three axes (p 0.2), rot90 (p 0.2), intensity scale and shift by 0.1 (p 0.1 each): the defaults of
  MONAI's research-contributions BTCV code (UNETR and SwinUNETR).
* :func:`btcv_train_transforms`: preprocessing + augmentation, for training datasets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    LoadImaged,
    MapLabelValued,
    MapTransform,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRange,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from monai.utils import convert_data_type, convert_to_tensor, ensure_tuple

from .errors import InputError
from .input_rules import image_rule, label_grid_rule, label_values_rule
from .io import register_readers
from .labels import BTCV13, BTCV_NUM_CLASSES, ID_SPACES, from_btcv_lut

__all__ = [
    "CheckInputd",
    "LoadCheckedImaged",
    "SafeSpacingd",
    "HUWindowd",
    "load_transforms",
    "label_map_transform",
    "btcv_preprocessing",
    "btcv_train_augmentation",
    "btcv_train_transforms",
]


def _source(d: dict, key: str) -> str:
    v = d.get(key)
    meta = getattr(v, "meta", None) or d.get(f"{key}_meta_dict") or {}
    return str(meta.get("filename_or_obj", f"<{key}>"))


class CheckInputd(MapTransform):
    """Stop with an :class:`InputError` naming the file when the loaded data cannot be right.

    Checks (after ``EnsureChannelFirstd``) the rules of :mod:`common.input_rules` on the arrays: the image one 3D
    channel with finite voxels; a label, if present, one 3D volume on the image's grid (same shape, same affine)
    with integer values in ``0..num_classes-1``.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        num_classes: int = BTCV_NUM_CLASSES,
    ):
        keys = [image_key] + ([label_key] if label_key else [])
        super().__init__(keys, allow_missing_keys=True)
        self.image_key, self.label_key = image_key, label_key
        self.num_classes = num_classes

    def __call__(self, data):
        d = dict(data)
        img = d.get(self.image_key)
        src = _source(d, self.image_key) if img is not None else None
        if img is not None:
            _raise(image_rule(src, int(img.shape[0]), tuple(img.shape[1:])))
            _refuse_non_finite(img, src)
        lab = d.get(self.label_key) if self.label_key else None
        if lab is not None and not isinstance(lab, str):
            lsrc = _source(d, self.label_key)
            pair = (src, tuple(img.shape[1:]), getattr(img, "affine", None)) if img is not None else ()
            _raise(label_grid_rule(lsrc, int(lab.shape[0]), tuple(lab.shape[1:]), getattr(lab, "affine", None), *pair))
            t = torch.as_tensor(lab)
            values = [float(t.min()), float(t.max())]
            if t.is_floating_point():
                frac = t[t != torch.round(t)]
                values += [float(frac[0])] if frac.numel() else []
            _raise(label_values_rule(lsrc, np.asarray(values), self.num_classes))
        return d


def _raise(problems: list[str]) -> None:
    if problems:
        raise InputError(problems)


def _refuse_non_finite(img, src: str) -> None:
    """An :class:`InputError` with the count and location of NaN / infinite voxels, if any.

    They are refused rather than replaced: a NaN spreads through every window or slice that touches it, so the
    prediction around it would be silently wrong, and no replacement value is right for every scan.
    """
    t = torch.as_tensor(img)
    if not t.is_floating_point():
        return
    bad = ~torch.isfinite(t)
    n = int(bad.sum())
    if n:
        where = torch.nonzero(bad[0] if bad.ndim == 4 else bad)
        lo, hi = where.min(0).values.tolist(), where.max(0).values.tolist()
        box = ", ".join(f"{a}..{b}" for a, b in zip(lo, hi))
        raise InputError(
            f"{src}: {n} voxel(s) are NaN or infinite (first at index {tuple(where[0].tolist())}, all within "
            f"{box}; array order after loading)",
            hint="fix the conversion that produced the file, or set those voxels to a real HU value (e.g. -1024, air)",
        )


class LoadCheckedImaged(LoadImaged):
    """``LoadImaged`` that turns a missing or unreadable file into an :class:`InputError` naming it."""

    def __call__(self, data, reader=None):
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
                raise InputError(f"{path}: file not found", hint=f"check the '{key}' path of this case")
            try:  # one key at a time, so an error names the file that caused it
                d.update(super().__call__({key: path}, reader))
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"{path}: cannot read the image ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        return d


class SafeSpacingd(Spacingd):
    """MONAI's ``Spacingd`` that leaves non-dictionary ``<key>_*`` entries alone.

    MONAI 1.6's ``Spacingd`` calls ``.update`` on every entry whose name starts with ``image_`` after
    resampling a NIfTI image; MONAI Label puts the string ``image_path`` there, so MONAI Label inference on a
    ``.nii.gz`` crashed with ``'str' object has no attribute 'update'``. Such entries are set aside during the
    call and put back unchanged; metadata dictionaries are still updated as MONAI does.
    """

    def __call__(self, data, lazy: bool | None = None):
        d = dict(data)
        aside = {}
        for key in self.key_iterator(d):
            for k in [k for k in d if isinstance(k, str) and k.startswith(f"{key}_") and not isinstance(d[k], dict)]:
                aside[k] = d.pop(k)
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out


def load_transforms(
    keys: KeysCollection = ("image", "label"),
    num_classes: int = BTCV_NUM_CLASSES,
    dtype: DtypeLike = np.float32,
) -> list:
    """Load (nibabel for NIfTI, SimpleITK for DICOM folders / .mha / .nrrd), channel first, check.

    ``dtype``: the arrays' type after loading; ``None`` keeps the file's own (int16 for most CT), for a pipeline
    whose next value-changing step converts anyway (the 2D bundles' HU window): MONAI copies every NIfTI array
    into C order on loading, and copying int16 instead of float32 halves that copy.
    """
    keys = ensure_tuple(keys)
    loader = register_readers(LoadCheckedImaged(keys, dtype=dtype, image_only=True, allow_missing_keys=True))
    label_key = "label" if "label" in keys else None
    return [
        loader,
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        CheckInputd(image_key=keys[0], label_key=label_key, num_classes=num_classes),
    ]


class _OneBufferScaleIntensityRange(ScaleIntensityRange):
    """MONAI's ``ScaleIntensityRange`` computed in one new buffer: the same operations in the same order (so the
    same float32 values), in place after the first, where MONAI allocates a new tensor for each of its five."""

    def __call__(self, img):
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if self.a_max - self.a_min == 0.0 or self.b_min is None or self.b_max is None:
            return super().__call__(img)
        out = img - self.a_min  # a new tensor (the input is never modified), as MONAI's first step
        span = self.a_max - self.a_min
        # integer data with integer window ends: the difference is still integer, and the division makes it float
        out = out.div_(span) if out.is_floating_point() else out / span
        out.mul_(self.b_max - self.b_min).add_(self.b_min)
        if self.clip:
            out.clamp_(self.b_min, self.b_max)
        return convert_data_type(out, dtype=self.dtype or img.dtype)[0]


class HUWindowd(ScaleIntensityRanged):
    """``ScaleIntensityRanged`` (HU window ``[a_min, a_max]`` -> ``[b_min, b_max]``, clipped) computed in one buffer.

    Bit-identical to MONAI's (tested); a BTCV-size CT is 157 MB in float32, and MONAI's five intermediate tensors
    each cost a pass and fresh memory.
    """

    def __init__(
        self,
        keys: KeysCollection,
        a_min: float,
        a_max: float,
        b_min=0.0,
        b_max=1.0,
        clip: bool = True,
        dtype=np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, a_min, a_max, b_min, b_max, clip, dtype, allow_missing_keys)
        self.scaler = _OneBufferScaleIntensityRange(a_min, a_max, b_min, b_max, clip, dtype)


def label_map_transform(label_map: str = BTCV13, label_key: str = "label") -> list:
    """Transforms mapping BTCV label ids to a training protocol's ids.

    ``btcv13``: no change (14 classes). ``synapse8``: the 8 Synapse organs get ids 1..8 in the papers'
    column order (aorta, gallbladder, left kidney, right kidney, liver, pancreas, spleen, stomach); the other
    five organs become background (9 classes).
    """
    if label_map in (BTCV13, "", None):
        return []
    if label_map not in ID_SPACES:
        raise InputError(f"unknown label_map {label_map!r}", hint=f"use one of {', '.join(ID_SPACES)}")
    lut = from_btcv_lut(label_map)
    orig = list(range(len(lut)))
    return [MapLabelValued(label_key, orig_labels=orig, target_labels=[int(v) for v in lut], allow_missing_keys=True)]


def btcv_preprocessing(
    keys: KeysCollection = ("image", "label"),
    spacing: Sequence[float] = (1.5, 1.5, 2.0),
    hu_window: Sequence[float] = (-175.0, 250.0),
    label_map: str = BTCV13,
) -> Compose:
    """The BTCV 3D preprocessing (invertible, so predictions can be mapped back to the input grid).

    Load -> check -> orientation RAS -> ``Spacingd`` (bilinear image, nearest label) -> HU window to [0, 1],
    clipped -> crop to the foreground (voxels above the window's lower bound) -> label map.
    """
    keys = ensure_tuple(keys)
    modes = ["bilinear" if k == keys[0] else "nearest" for k in keys]
    xs = load_transforms(keys)
    xs += [
        Orientationd(keys, axcodes="RAS", labels=None, allow_missing_keys=True),
        SafeSpacingd(keys, pixdim=tuple(float(s) for s in spacing), mode=modes, allow_missing_keys=True),
        HUWindowd(keys[0], a_min=float(hu_window[0]), a_max=float(hu_window[1]), b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys, source_key=keys[0], allow_smaller=True, allow_missing_keys=True),
    ]
    xs += label_map_transform(label_map)
    return Compose(xs)


def btcv_train_augmentation(
    keys: KeysCollection = ("image", "label"),
    roi_size: Sequence[int] = (96, 96, 96),
    num_samples: int = 4,
    pos: float = 1.0,
    neg: float = 1.0,
    flip_prob: float = 0.2,
    rot90_prob: float = 0.2,
    scale_factor: float = 0.1,
    scale_prob: float = 0.1,
    shift_offset: float = 0.1,
    shift_prob: float = 0.1,
) -> list:
    """The MONAI BTCV augmentation: pad to the ROI where needed, RandCropByPosNegLabel, flips, rot90,
    intensity scale and shift (research-contributions defaults).

    The rot90 turns in the axial plane, so non-cubic ROIs keep their shape when ``roi_size[0] == roi_size[1]``.
    """
    keys = ensure_tuple(keys)
    roi = tuple(int(r) for r in roi_size)
    return [
        SpatialPadd(keys, spatial_size=roi),
        RandCropByPosNegLabeld(
            keys,
            label_key=keys[1],
            spatial_size=roi,
            pos=pos,
            neg=neg,
            num_samples=num_samples,
            image_key=keys[0],
            image_threshold=0,
        ),
        RandFlipd(keys, prob=flip_prob, spatial_axis=0),
        RandFlipd(keys, prob=flip_prob, spatial_axis=1),
        RandFlipd(keys, prob=flip_prob, spatial_axis=2),
        RandRotate90d(keys, prob=rot90_prob, max_k=3, spatial_axes=(0, 1)),
        RandScaleIntensityd(keys[0], factors=scale_factor, prob=scale_prob),
        RandShiftIntensityd(keys[0], offsets=shift_offset, prob=shift_prob),
    ]


def btcv_train_transforms(
    keys: KeysCollection = ("image", "label"),
    spacing: Sequence[float] = (1.5, 1.5, 2.0),
    hu_window: Sequence[float] = (-175.0, 250.0),
    roi_size: Sequence[int] = (96, 96, 96),
    num_samples: int = 4,
    label_map: str = BTCV13,
    **augmentation,
) -> Compose:
    """Preprocessing followed by augmentation; a ``CacheDataset`` caches up to the first random transform."""
    pre = btcv_preprocessing(keys, spacing, hu_window, label_map)
    aug = btcv_train_augmentation(keys, roi_size, num_samples, **augmentation)
    return Compose(list(pre.transforms) + aug)
