"""BTCV label definitions: the 13-organ map and the 8-organ Synapse subset, defined once.

Everything that needs label ids, organ names or colours (configs, metadata ``channel_def``, metrics,
reports, the phantom generator, the Synapse importer) reads them from here. A label file's classes are in one
of two id spaces (:data:`ID_SPACES`): ``btcv13`` (the 13 BTCV organs, 14 classes) or ``synapse8`` (the 2D papers'
8 organs, 9 classes); every conversion between them goes through :func:`to_btcv_lut` / :func:`from_btcv_lut`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Organ",
    "BTCV_ORGANS",
    "BTCV_NUM_CLASSES",
    "SYNAPSE_ORGAN_ORDER",
    "SYNAPSE_AUTHOR_DATA_IDS",
    "SYNAPSE_NUM_CLASSES",
    "BTCV13",
    "SYNAPSE8",
    "ID_SPACES",
    "id_space",
    "id_space_of",
    "to_btcv_lut",
    "from_btcv_lut",
    "organ_names",
    "channel_def",
    "remap_labels",
    "organ",
]


@dataclass(frozen=True)
class Organ:
    """One foreground class of the BTCV label map."""

    id: int
    key: str  # short machine name, used in CSV headers and config keys
    name: str  # human-readable name, used in reports and ``channel_def``
    colour: tuple[int, int, int]  # RGB used in overlays and charts


# BTCV ("Beyond the Cranial Vault", MICCAI 2015 multi-atlas labeling challenge) label order, as in the challenge data.
BTCV_ORGANS: tuple[Organ, ...] = (
    Organ(1, "spleen", "spleen", (255, 128, 0)),
    Organ(2, "kidney_right", "right kidney", (0, 200, 0)),
    Organ(3, "kidney_left", "left kidney", (0, 110, 255)),
    Organ(4, "gallbladder", "gallbladder", (255, 230, 0)),
    Organ(5, "esophagus", "esophagus", (0, 230, 230)),
    Organ(6, "liver", "liver", (200, 0, 0)),
    Organ(7, "stomach", "stomach", (230, 0, 230)),
    Organ(8, "aorta", "aorta", (255, 60, 60)),
    Organ(9, "ivc", "inferior vena cava", (60, 60, 255)),
    Organ(10, "portal_splenic_vein", "portal and splenic vein", (150, 90, 255)),
    Organ(11, "pancreas", "pancreas", (250, 190, 130)),
    Organ(12, "adrenal_right", "right adrenal gland", (120, 255, 120)),
    Organ(13, "adrenal_left", "left adrenal gland", (120, 200, 255)),
)
BTCV_NUM_CLASSES = len(BTCV_ORGANS) + 1  # 14 with background

_BY_KEY = {o.key: o for o in BTCV_ORGANS}
_BY_ID = {o.id: o for o in BTCV_ORGANS}

# The 2D papers' 8 organs, in the column order of their result tables (TransUNet, Table 1).
SYNAPSE_ORGAN_ORDER: tuple[str, ...] = (
    "aorta",
    "gallbladder",
    "kidney_left",
    "kidney_right",
    "liver",
    "pancreas",
    "spleen",
    "stomach",
)
SYNAPSE_NUM_CLASSES = len(SYNAPSE_ORGAN_ORDER) + 1  # 9 with background

# Our 9-class Synapse models predict the 8 organs with class ids 1..8 in the papers' column order above
# (1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney, 5 liver, 6 pancreas, 7 spleen, 8 stomach), so a
# result column and a class id always agree.

# Class ids of the TransUNet authors' preprocessed Synapse files (train_npz / test_vol_h5), as commonly
# reported: the BTCV ids compacted after dropping the five other organs. This is NOT verified
# against the files (third-party code disagrees), so the Synapse importer takes the mapping as an option and
# checks it against the anatomy of the data it converts (see ``common.tools.synapse``).
SYNAPSE_AUTHOR_DATA_IDS: dict[str, int] = {
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "gallbladder": 4,
    "liver": 5,
    "stomach": 6,
    "aorta": 7,
    "pancreas": 8,
}


BTCV13, SYNAPSE8 = "btcv13", "synapse8"
# label id spaces: the organ of each foreground class id (1..n), in id order
ID_SPACES: dict[str, tuple[str, ...]] = {BTCV13: tuple(o.key for o in BTCV_ORGANS), SYNAPSE8: SYNAPSE_ORGAN_ORDER}


def id_space(name: str) -> tuple[str, ...]:
    """The organ keys of classes 1..n of the id space ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return ID_SPACES[name]
    except KeyError:
        raise ValueError(f"unknown label id space {name!r}: expected one of {', '.join(ID_SPACES)}") from None


def id_space_of(num_classes: int) -> str:
    """The id space with ``num_classes`` classes (background included): 14 -> btcv13, 9 -> synapse8."""
    for name, keys in ID_SPACES.items():
        if len(keys) + 1 == int(num_classes):
            return name
    raise ValueError(f"no label id space has {num_classes} classes (btcv13: 14, synapse8: 9)")


def to_btcv_lut(name: str) -> np.ndarray:
    """Look-up table (length n + 1) mapping the class ids of id space ``name`` to BTCV ids."""
    keys = id_space(name)
    lut = np.zeros(len(keys) + 1, dtype=np.uint8)
    for cid, key in enumerate(keys, start=1):
        lut[cid] = _BY_KEY[key].id
    return lut


def from_btcv_lut(name: str) -> np.ndarray:
    """Look-up table (length 14) mapping BTCV ids to the class ids of id space ``name``; organs it lacks map to 0."""
    lut = np.zeros(BTCV_NUM_CLASSES, dtype=np.uint8)
    for cid, key in enumerate(id_space(name), start=1):
        lut[_BY_KEY[key].id] = cid
    return lut


def organ_names(space: str = BTCV13) -> list[str]:
    """Human-readable names of the foreground classes of id space ``space``, in class-id order."""
    return [_BY_KEY[k].name for k in id_space(space)]


def channel_def(space: str = BTCV13) -> dict[str, str]:
    """The ``channel_def`` of a bundle's ``outputs#pred`` metadata: class id (as a string) -> name."""
    names = ["background"] + organ_names(space)
    return {str(i): n for i, n in enumerate(names)}


def remap_labels(label, lut: np.ndarray):
    """Apply a look-up table to an integer label array or tensor, returning the same type.

    Raises ``ValueError`` when a value falls outside the table (instead of wrapping around silently).
    """
    import torch

    if isinstance(label, torch.Tensor):
        idx = label.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(lut)):
            raise ValueError(f"label values must lie in 0..{len(lut) - 1}, got {int(idx.min())}..{int(idx.max())}")
        out = torch.as_tensor(lut, device=label.device)[idx].to(label.dtype)
        if hasattr(label, "copy_meta_from") and hasattr(out, "copy_meta_from"):
            out.copy_meta_from(label)
        return out
    arr = np.asarray(label)
    idx = arr.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(lut)):
        raise ValueError(f"label values must lie in 0..{len(lut) - 1}, got {idx.min()}..{idx.max()}")
    return lut[idx].astype(arr.dtype)


def organ(key_or_id) -> Organ:
    """Look up an organ by its key (``"liver"``) or BTCV id (6)."""
    if isinstance(key_or_id, str):
        return _BY_KEY[key_or_id]
    return _BY_ID[int(key_or_id)]
