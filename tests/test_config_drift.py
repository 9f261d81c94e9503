"""The bundles of one kind (2D slice-wise, 3D patch-based) share their configs except for what makes each one its
architecture: the network, its training recipe, and its metadata. A fix to a transform, a handler, an inferer or
an evaluation key lands in every bundle of the kind, or this test names the bundle and the key that drifted."""

import configparser
import json

import pytest
from bundle_cases import BUNDLE_NAMES
from conftest import BUNDLES

KINDS = {
    "2d": ["transunet_btcv", "swin_unet_btcv", "mt_unet_btcv"],
    "3d": ["unetr_btcv", "swin_unetr_btcv", "unet_btcv", "mednext_btcv"],
}
# what may differ between the bundles of a kind: the network and the paper's recipe for it
ARCHITECTURE_PREFIXES = ("network_def#", "optimizer#", "loss#", "train#lr_scheduler#")
RECIPE_KEYS = {
    "learning_rate",
    "momentum",
    "batch_size",
    "max_epochs",
    "ce_weight",
    "dice_weight",
    "flash_attention",
    "use_checkpoint",
    "deep_supervision",
    "deep_supr_num",
    "num_samples",
    "poly_power",
    "warmup_epochs",
    "weight_decay",
    "val_interval",
    "inferer#mode",
    "validate#inferer#mode",
    "kernel_size",  # MedNeXt's k3 / k5
    "spacing",  # MedNeXt trains at 1 mm isotropic on 128^3 patches, as its paper
    "roi_size",
    "sw_batch_size",  # what fits a GPU at that patch size
    "network",  # multi_gpu_train.json: find_unused_parameters for networks with parameters their forward skips
}
SHARED_FILES = (
    "train.json",
    "inference.json",
    "evaluate.json",
    "multi_gpu_train.json",
    "synapse.json",
    "inference_trt.json",
)


def flatten(node, path: str = "") -> dict:
    """``{"a": {"b": [1, {"c": 2}]}}`` -> ``{"a#b#0": 1, "a#b#1#c": 2}``; lists of plain values stay whole."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(flatten(v, f"{path}#{k}" if path else str(k)))
        return out
    if isinstance(node, list) and any(isinstance(v, (dict, list)) for v in node):
        out = {}
        for i, v in enumerate(node):
            out.update(flatten(v, f"{path}#{i}"))
        return out
    return {path: node}


def drift(a: dict, b: dict) -> list[str]:
    """The keys whose values differ between two flattened configs, architecture and recipe keys left out."""
    keys = sorted(set(a) | set(b))
    differ = [k for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")]
    return [k for k in differ if not k.startswith(ARCHITECTURE_PREFIXES) and k not in RECIPE_KEYS]


def test_every_bundle_has_a_kind():
    assert sorted(b for bs in KINDS.values() for b in bs) == sorted(BUNDLE_NAMES)


@pytest.mark.parametrize(
    "kind,name",
    [(k, n) for k in sorted(KINDS) for n in SHARED_FILES if (BUNDLES / KINDS[k][0] / "configs" / n).is_file()],
)
def test_configs_of_one_kind_differ_only_in_the_architecture(kind, name):
    first, *others = KINDS[kind]
    files = [BUNDLES / b / "configs" / name for b in KINDS[kind]]
    assert all(f.is_file() for f in files), f"{name} is missing from some {kind} bundles: {files}"
    ref = flatten(json.loads(files[0].read_text(encoding="utf-8")))
    for bundle, f in zip(others, files[1:]):
        got = drift(ref, flatten(json.loads(f.read_text(encoding="utf-8"))))
        assert not got, f"{bundle}/configs/{name} drifted from {first}'s: {got}"


def test_logging_conf_is_the_same_everywhere():
    ref = configparser.ConfigParser(interpolation=None)
    ref.read(BUNDLES / BUNDLE_NAMES[0] / "configs" / "logging.conf")
    for bundle in BUNDLE_NAMES[1:]:
        got = configparser.ConfigParser(interpolation=None)
        got.read(BUNDLES / bundle / "configs" / "logging.conf")
        assert {s: dict(got[s]) for s in got} == {s: dict(ref[s]) for s in ref}, bundle


def test_drift_is_caught():
    """A change outside the architecture (a validation transform's mode) is drift; a recipe change is not."""
    cfg = json.loads((BUNDLES / "transunet_btcv" / "configs" / "train.json").read_text(encoding="utf-8"))
    ref = flatten(cfg)
    changed = json.loads(json.dumps(cfg))
    changed["learning_rate"] = 123.0
    changed["network_def"]["network"] = "some.Other"
    assert drift(ref, flatten(changed)) == []
    changed["num_classes"] = 9
    changed["validate"]["handlers"] = changed["validate"]["handlers"][:-1]
    got = drift(ref, flatten(changed))
    assert "num_classes" in got and any(k.startswith("validate#handlers#") for k in got), got
