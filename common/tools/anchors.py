"""Published numbers the project is measured against, per bundle, with the paper or repository they come from.

They are shown beside measured results only where the protocol and the split are the same (``synapse8`` on the
Synapse test cases for the 2D papers): never beside results on the demo phantoms or on a datalist of one's own. Dice values are fractions (the papers' percentages divided by 100); the Synapse HD95 values are
in voxels.
"""

from __future__ import annotations

__all__ = ["ANCHORS", "anchors_for"]

_SYN_COLUMNS = ("aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach")


def _synapse(mean_dsc: float, hd95: float | None, organs: tuple[float, ...], source: str) -> dict:
    return {
        "protocol": "synapse8",
        "split": "synapse (12 test cases)",
        "split_id": "synapse",
        "mean_dice": mean_dsc / 100.0,
        "mean_hd95": hd95,
        "organs": {k: v / 100.0 for k, v in zip(_SYN_COLUMNS, organs)},
        "source": source,
    }


ANCHORS: dict[str, list[dict]] = {
    "transunet_btcv": [
        _synapse(77.48, 31.69, (87.23, 63.13, 81.87, 77.02, 94.08, 55.86, 85.08, 75.62), "TransUNet paper, Table 1")
    ],
    "swin_unet_btcv": [
        _synapse(79.13, 21.55, (85.47, 66.53, 83.28, 79.61, 94.29, 56.58, 90.66, 76.60), "Swin-Unet paper, Table 1")
    ],
    "mt_unet_btcv": [
        _synapse(78.59, 26.59, (87.92, 64.99, 81.47, 77.29, 93.06, 59.46, 87.75, 76.81), "MT-UNet paper, Table 1")
    ],
    "unetr_btcv": [
        {
            "protocol": "btcv13",
            "split": "BTCV standard leaderboard (test set)",
            "split_id": "btcv_test",
            "mean_dice": 0.856,
            "source": "UNETR paper",
        },
        {
            "protocol": "btcv13",
            "split": "dataset_0 (6 validation cases)",
            "split_id": "dataset_0",
            "mean_dice": 0.80,
            "source": "MONAI UNETR tutorial, about",
        },
    ],
    "swin_unetr_btcv": [
        {
            "protocol": "btcv13",
            "split": "dataset_0 (6 validation cases), overlap 0.7",
            "split_id": "dataset_0",
            "mean_dice": 0.8225,
            "source": "research-contributions SwinUNETR",
        },
        {
            "protocol": "btcv13",
            "split": "model_zoo (last 9 cases)",
            "split_id": "model_zoo",
            "mean_dice": 0.82,
            "source": "model zoo swin_unetr_btcv_segmentation",
        },
        {
            "protocol": "btcv13",
            "split": "5-fold cross-validation on the 30 cases",
            "split_id": "cv5",
            "mean_dice": 0.7889,
            "source": "nnU-Net Revisited (SwinUNETR)",
        },
    ],
    "unet_btcv": [
        {
            "protocol": "btcv13",
            "split": "5-fold cross-validation on the 30 cases",
            "split_id": "cv5",
            "mean_dice": 0.8308,
            "source": "nnU-Net Revisited (nnU-Net; ResEnc L 0.8335)",
        },
    ],
    "mednext_btcv": [
        {
            "protocol": "btcv13",
            "split": "5-fold cross-validation on the 30 cases",
            "split_id": "cv5",
            "mean_dice": 0.847,
            "source": "nnU-Net Revisited (MedNeXt-L k3; k5 0.8504)",
        },
    ],
}


def anchors_for(bundle: str, protocol: str, split: str | None) -> list[dict]:
    """Published references for a bundle under a protocol and a named split (``synapse``, ``dataset_0``,
    ``model_zoo``, ``cv5``): empty when none match, and always for ``split=None`` (the demo phantoms or a datalist of
    one's own, which no published number was measured on)."""
    if split is None:
        return []
    return [a for a in ANCHORS.get(bundle, []) if a["protocol"] == protocol and a["split_id"] == split]
