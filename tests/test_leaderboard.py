"""The leaderboard report end to end on the demo phantoms with tiny bundles, and the statistics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from bundle_cases import BUNDLE_TINY
from conftest import BUNDLES
from PIL import Image
from test_geometry import random_checkpoint

from common.leaderboard import CHART_WIDTH, HEADER, PANEL, leaderboard
from common.io import load_array
from common.labels import BTCV_ORGANS
from common.stats import bootstrap_ci, describe, paired_comparison


@pytest.fixture(scope="module")
def oracle(tiny_data, tmp_path_factory):
    """A prediction folder holding the ground truth itself: must score Dice 1 everywhere."""
    d = tmp_path_factory.mktemp("oracle")
    dl = json.loads((tiny_data / "dataset.json").read_text(encoding="utf-8"))
    for it in dl["validation"] + dl["training"]:
        name = it["image"].split("/")[-1].replace(".nii.gz", "_seg.nii.gz")
        shutil.copy(tiny_data / it["label"], d / name)
    return d


def test_leaderboard_end_to_end(tiny_data, oracle, tmp_path, capsys):
    ck = {b: random_checkpoint(b, tmp_path / f"{b}.pt") for b in ("unetr_btcv", "transunet_btcv")}
    out = tmp_path / "board"
    doc = leaderboard(
        bundles=["unetr_btcv", "transunet_btcv"], predictions={"oracle": str(oracle)}, dataset_dir=str(tiny_data),
        protocol="btcv13", out=str(out), ckpts=ck, overrides={b: BUNDLE_TINY[b] for b in ck},
        compare=["oracle", "unetr_btcv"], progress=False,
    )  # fmt: skip
    for f in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "per_organ_dice.png"):
        assert (out / f).is_file(), f
    table = doc["bundles"]
    assert table["oracle"]["mean"]["mean_over_organs"] == pytest.approx(1.0)
    assert table["unetr_btcv"]["mean"]["mean_over_organs"] < 1.0
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "-> published: UNETR paper" in md and "Wilcoxon" in md and "95 % CI" in md
    assert doc["comparison"]["a"] == "oracle" and doc["comparison"]["mean_dice"]["mean_difference"] > 0
    # each bundle's own report, with its checkpoint hash
    res = json.loads((out / "unetr_btcv" / "results.json").read_text(encoding="utf-8"))
    assert res["meta"]["checkpoint_sha256"] and res["meta"]["protocol"] == "btcv13"
    # the chart: a valid PNG of the documented size
    with Image.open(out / "per_organ_dice.png") as im:
        im.verify()
    with Image.open(out / "per_organ_dice.png") as im:
        n = 3
        assert im.size == (CHART_WIDTH, 40 + 16 * n + (12 * n + 10) * 13 + 40) and im.mode == "RGB"
    # overlays: one per case, a row per organ present, CT | GT | 3 predictions
    case = json.loads((tiny_data / "dataset.json").read_text(encoding="utf-8"))["validation"][0]
    gt, _ = load_array(tiny_data / case["label"])
    present = sum(1 for o in BTCV_ORGANS if (gt == o.id).any())
    png = out / "overlays" / "phantom0003.png"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.size == ((2 + 3) * PANEL, HEADER + present * PANEL)
        arr = np.asarray(im)
        assert arr.std() > 10, "the overlay is not blank"
    printed = capsys.readouterr().out
    assert "leaderboard written to" in printed and str(out / "leaderboard.md") in printed


def test_leaderboard_synapse_protocol_with_a_9_class_bundle(tiny_data, oracle, tmp_path):
    b = "transunet_btcv"
    out = tmp_path / "syn"
    doc = leaderboard(
        bundles=[b], predictions={"oracle": str(oracle)}, dataset_dir=str(tiny_data), protocol="synapse8",
        out=str(out), ckpts={}, configs={b: [str(BUNDLES / b / "configs" / "synapse.json")]},
        overrides={b: {**BUNDLE_TINY[b], "load_pretrain": False}}, progress=False,
    )  # fmt: skip
    assert json.loads((out / b / "results.json").read_text(encoding="utf-8"))["meta"]["protocol"] == "synapse8"
    assert doc["bundles"]["oracle"]["mean"]["mean_over_organs"] == pytest.approx(1.0)
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "-> published: TransUNet paper, Table 1 (synapse (12 test cases))" in md
    assert doc["bundles"][b]["organs"].keys() == {"aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach"}


def test_bootstrap_and_paired_statistics():
    v = [0.8, 0.82, 0.85, 0.79, 0.9, 0.88]
    lo, hi = bootstrap_ci(v, seed=1)
    assert lo < np.mean(v) < hi and (lo, hi) == bootstrap_ci(v, seed=1)
    d = describe(v + [float("nan")])
    assert d["n"] == 6 and d["std"] == pytest.approx(np.std(v, ddof=1))
    a = {f"c{i}": x for i, x in enumerate(v)}
    b = {k: x - 0.05 for k, x in a.items()}
    p = paired_comparison(a, b)
    assert p["mean_difference"] == pytest.approx(0.05) and p["n"] == 6
    from scipy.stats import wilcoxon

    assert p["wilcoxon_p"] == pytest.approx(wilcoxon([0.05] * 6).pvalue)
    assert paired_comparison(a, a)["wilcoxon_p"] == 1.0
