"""Evaluation protocols: which organs are scored, with which metrics, units and rules. Defined once, looked up by
metrics, evaluation, the leaderboard and the published-number cards.

``btcv13``
    The 13 BTCV organs (this project's 3D protocol, as MONAI's UNETR / SwinUNETR work and nnU-Net Revisited report
    it). Dice; HD95 in mm, MONAI's definition; normalised surface Dice (NSD) at 2 mm. An organ absent from both the
    ground truth and the prediction is not scored (NaN, skipped by means); present in exactly one: Dice 0, NSD 0,
    HD95 = the image diagonal in mm.
``synapse8``
    The 2D papers' protocol (TransUNet, Swin-Unet, MT-UNet), exactly as their ``calculate_metric_percase``: the 8
    Synapse organs in the papers' column order, medpy ``dc`` and ``hd95`` on the 3D masks *without* voxel spacing (HD95
    in voxels); prediction empty -> (0, 0); prediction non-empty and ground truth empty -> (1, 0).
``synapse8_3d``
    The 3D Synapse comparison (nnFormer, UNETR++): the same organs and rules as ``synapse8``, but medpy's ``hd95``
    with ``voxelspacing``, so HD95 is in millimetres.

Two HD95 definitions are in use and differ by up to several millimetres on the same masks:
:data:`HD95_MONAI` (the larger of the two directed 95th percentiles) and :data:`HD95_MEDPY` (the 95th percentile of
both directions' distances pooled). Every result file and table names the one it used.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError
from .labels import BTCV_ORGANS, SYNAPSE_ORGAN_ORDER, organ

__all__ = [
    "Protocol",
    "PROTOCOLS",
    "HD95_MONAI",
    "HD95_MEDPY",
    "get_protocol",
    "protocol_organs",
    "metric_names",
    "protocol_rule",
]

HD95_MONAI = (
    "MONAI compute_hausdorff_distance(percentile=95): the larger of the two directed 95th-percentile surface distances"
)
HD95_MEDPY = "medpy hd95: the 95th percentile of both directions' surface distances pooled"
NSD_TOLERANCE_MM = 2.0  # normalised surface Dice tolerance of btcv13


@dataclass(frozen=True)
class Protocol:
    """One way of scoring a segmentation, as a paper or benchmark defines it."""

    name: str
    organs: tuple[str, ...]  # organ keys, in report column order
    metrics: tuple[str, ...]  # per-organ metrics, in column order
    papers_rule: bool  # True: the 2D papers' presence rule and medpy metrics; False: btcv13's NaN rule, MONAI metrics
    hd95_mm: bool  # HD95 measured with the voxel spacing (mm) or in voxels
    hd95: str  # which HD95 definition
    split: str  # the split its published numbers use
    rule: str  # the stated rule, recorded in every result file ({tol} is the NSD tolerance)

    @property
    def hd95_unit(self) -> str:
        return "mm" if self.hd95_mm else "voxels"

    def units(self) -> dict[str, str]:
        """Per-metric unit suffix for table headers."""
        return {m: (f" ({self.hd95_unit})" if m == "hd95" else "") for m in self.metrics}


_PAPERS = (
    "Prediction empty: (0, 0); prediction non-empty and ground truth empty: (1, 0). Mean over cases, then over organs."
)

PROTOCOLS: dict[str, Protocol] = {
    "btcv13": Protocol(
        "btcv13",
        tuple(o.key for o in BTCV_ORGANS),
        ("dice", "hd95", "nsd"),
        False,
        True,
        HD95_MONAI,
        "dataset_0",
        "13 BTCV organs; Dice, HD95 in mm (" + HD95_MONAI + ") and normalised surface Dice at a {tol:g} mm tolerance. "
        "Organ absent from the ground truth and not predicted: not scored (NaN, skipped by means). Present in exactly "
        "one of ground truth and prediction: Dice 0, NSD 0, HD95 = image diagonal in mm. Mean = mean over organs of the "
        "per-organ means over cases.",
    ),
    "synapse8": Protocol(
        "synapse8",
        SYNAPSE_ORGAN_ORDER,
        ("dice", "hd95"),
        True,
        False,
        HD95_MEDPY,
        "synapse",
        "8 Synapse organs (papers' column order); medpy dc and hd95 without voxel spacing (HD95 in voxels; "
        + HD95_MEDPY
        + "). "
        + _PAPERS,
    ),
    "synapse8_3d": Protocol(
        "synapse8_3d",
        SYNAPSE_ORGAN_ORDER,
        ("dice", "hd95"),
        True,
        True,
        HD95_MEDPY,
        "synapse",
        "8 Synapse organs (papers' column order); medpy dc and hd95 with the voxel spacing (HD95 in mm; "
        + HD95_MEDPY
        + "), as the 3D Synapse papers (nnFormer, UNETR++) report it. "
        + _PAPERS,
    ),
}


def get_protocol(name: str) -> Protocol:
    """The protocol of that name; an unknown name is an :class:`InputError` listing the known ones."""
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise InputError(f"unknown protocol {name!r}", hint=f"choose one of: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def protocol_organs(protocol: str) -> list[tuple[str, str, int]]:
    """Organs scored under a protocol, in report column order: (key, name, BTCV class id). Ground truth and
    predictions are compared in the BTCV id space (a 9-class prediction is mapped back first)."""
    return [(k, organ(k).name, organ(k).id) for k in get_protocol(protocol).organs]


def metric_names(protocol: str) -> tuple[str, ...]:
    """The per-organ metrics a protocol reports, in column order."""
    return get_protocol(protocol).metrics


def protocol_rule(protocol: str, nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> str:
    """The stated rule of a protocol, as recorded in every result file."""
    return get_protocol(protocol).rule.format(tol=nsd_tolerance_mm)
