"""Per-bundle test settings: which bundles exist and the tiny overrides that make them run in seconds.

Every bundle in ``bundles/`` must appear here; ``test_every_bundle_is_covered`` fails otherwise.
"""

from __future__ import annotations

from conftest import TINY_3D_SETTINGS, TINY_UNETR

BUNDLE_TINY: dict[str, dict] = {
    "unetr_btcv": {
        **TINY_UNETR,
        **TINY_3D_SETTINGS,
        "num_samples": 2,
        "warmup_epochs": 1,
    },
}
