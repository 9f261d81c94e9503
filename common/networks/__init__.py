"""Network definitions written in this project (the ones MONAI lacks) and weight loaders, under unique
module names. Submodules load on first use, so config expressions can say
``common.networks.transunet.TransUNet`` after ``import common``."""

import importlib

_SUBMODULES = {"transunet", "swin_unet", "mt_unet", "swinunetr", "nnunet_plan", "mednext", "slice_input"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
