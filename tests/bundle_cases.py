"""Per-bundle test settings: which bundles exist and the tiny overrides that make them run in seconds.

Every bundle in ``bundles/`` must appear here; ``test_every_bundle_is_covered`` fails otherwise.
"""

from __future__ import annotations

import torch
from conftest import TINY_3D_SETTINGS, TINY_UNETR

# shared by the 2D bundles: 32 x 32 slices, small batches, no worker processes
TINY_2D_SETTINGS = {
    "img_size": [32, 32],
    "batch_size": 8,
    "slice_batch": 8,
    "num_workers": 0,
}

BUNDLE_TINY: dict[str, dict] = {
    "unetr_btcv": {
        **TINY_UNETR,
        **TINY_3D_SETTINGS,
        "num_samples": 2,
        "warmup_epochs": 1,
    },
    "transunet_btcv": {
        **TINY_2D_SETTINGS,
        "network_def#block_units": [1, 1, 1],
        "network_def#width_factor": 0.5,
        "network_def#hidden_size": 32,
        "network_def#num_layers": 1,
        "network_def#num_heads": 2,
        "network_def#mlp_dim": 64,
        "network_def#decoder_head_channels": 16,
        "network_def#decoder_channels": [16, 8, 8, 4],
    },
    "swin_unet_btcv": {
        **TINY_2D_SETTINGS,
        "network_def#embed_dim": 8,
        "network_def#depths": [2, 2, 2],
        "network_def#num_heads": [1, 2, 4],
        "network_def#window_size": 2,
    },
    "mt_unet_btcv": {
        **TINY_2D_SETTINGS,
        "img_size": [64, 64],
        "network_def#stem_channels": [4, 8, 8],
        "network_def#feature_size": 16,
        "network_def#depths": [1, 1, 1, 1, 1],
        "network_def#num_heads": 2,
        "network_def#ea_heads": 4,
        "network_def#ea_memory": 8,
    },
    "swin_unetr_btcv": {
        **TINY_3D_SETTINGS,
        "roi_size": [64, 64, 64],
        "num_samples": 2,
        "warmup_epochs": 1,
        "network_def#feature_size": 12,
        "network_def#depths": [1, 1, 1, 1],
        "network_def#num_heads": [1, 1, 1, 1],
    },
    "unet_btcv": {
        **TINY_3D_SETTINGS,
        "num_samples": 2,
        "deep_supr_num": 2,
        "network_def#filters": "$common.networks.nnunet_plan.filters(@roi_size, @spacing, base=4, maximum=32)",
    },
    "mednext_btcv": {
        **TINY_3D_SETTINGS,
        "num_samples": 2,
        "network_def#init_filters": 4,
        "network_def#encoder_expansion_ratio": [2, 2, 2, 2],
        "network_def#decoder_expansion_ratio": [2, 2, 2, 2],
        "network_def#bottleneck_expansion_ratio": 2,
        "network_def#blocks_down": [1, 1, 1, 1],
        "network_def#blocks_bottleneck": 1,
        "network_def#blocks_up": [1, 1, 1, 1],
    },
}
BUNDLE_NAMES = sorted(BUNDLE_TINY)
# a bundle per kind of network code, for the slowest checks: one of the 3D bundles (all four build MONAI's networks
# through the same configs) and each 2D bundle (each brings its own hand-written network)
FAMILIES = ["unetr_btcv", "transunet_btcv", "swin_unet_btcv", "mt_unet_btcv"]


class ConstantLabelNet(torch.nn.Module):
    """A stand-in network whose scores pick ``label`` everywhere (logit ``score``, every other class 0), so an
    evaluation through a bundle has predictions known in advance: 2D (for ``common.slicewise.slicewise_network``)
    or, as a ``network_def`` of its own, 3D."""

    def __init__(self, label: int = 6, out_channels: int = 14, score: float = 1.0, **_):
        super().__init__()
        self.label, self.out_channels, self.score = int(label), int(out_channels), float(score)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((x.shape[0], self.out_channels, *x.shape[2:]), dtype=x.dtype, device=x.device)
        out[:, self.label] = self.score
        return out


# the tiny UNETR of BUNDLE_TINY as command-line arguments of `monai.bundle run`
TINY_CLI = [
    "--spacing",
    "[6.0,6.0,10.0]",
    "--roi_size",
    "[32,32,16]",
    "--network_def#feature_size",
    "4",
    "--network_def#hidden_size",
    "32",
    "--network_def#mlp_dim",
    "64",
    "--network_def#num_heads",
    "2",
]


def constant_label_network(label: int, score: float = 1.0) -> dict:
    """The ``network_def`` of a 2D bundle that predicts ``label`` everywhere (:class:`ConstantLabelNet`)."""
    return {
        "_target_": "common.slicewise.slicewise_network",
        "network": "bundle_cases.ConstantLabelNet",
        "roi_size": "@img_size",
        "slice_batch": "@slice_batch",
        "output": "@slice_output",
        "label": int(label),
        "score": float(score),
        "out_channels": "@num_classes",
    }


def saved_on_cuda(src, dst) -> str:
    """A copy of the checkpoint ``src`` as a GPU training saves it: every tensor's storage recorded on ``cuda:0``
    (the location string in the pickle changed; the data are the same), so loading it without mapping the
    storages to the CPU fails on a machine without CUDA, as a GPU user's file does."""
    import zipfile

    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        files = {n: z.read(n) for n in names}
    (pickle_name,) = [n for n in names if n.endswith("/data.pkl")]
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"  # BINUNICODE, memoised after its first use
    assert files[pickle_name].count(cpu) == 1, "not a checkpoint of CPU tensors saved by torch.save"
    files[pickle_name] = files[pickle_name].replace(cpu, cuda)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for n in names:
            z.writestr(n, files[n])
    return str(dst)
