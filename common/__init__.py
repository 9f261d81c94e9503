"""Shared code of the BTCV bundles: labels, data, transforms, slice-wise 2D-on-3D machinery, metrics, reports.
The offline commands (datalists, Synapse import, leaderboard, export, packaging, benchmark) are in ``common.tools``.

Submodules load on first use (``import common`` then ``common.data.get_datalist(...)``), which is how the
bundle configs reach them: MONAI's ``$import a.b`` config statement does not bind ``a``.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "bundle",
    "data",
    "distributed",
    "errors",
    "evaluation",
    "io",
    "labels",
    "inference",
    "losses",
    "metrics",
    "weights",
    "networks",
    "phantom",
    "protocols",
    "slicewise",
    "transforms",
    "tools",
    "figures",
    "input_rules",
    "cohort",
    "postprocess",
    "statistics",
    "tracking",
    "dicom_seg",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
