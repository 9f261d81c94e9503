"""Per-bundle test settings: which bundles exist and the tiny overrides that make them run in seconds.

Every bundle in ``bundles/`` must appear here; ``test_every_bundle_is_covered`` fails otherwise.
"""

from __future__ import annotations

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
}
