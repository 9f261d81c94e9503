"""The reproduction kit: nnU-Net's 5-fold split, the out-of-fold leaderboard entry, the bundles' reproduction cards."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import BUNDLES

from common.data import (
    BTCV_CASES,
    CV_FOLDS,
    btcv_datalist,
    cv_folds,
    get_datalist,
    split_cases,
)
from common.errors import InputError
from common.evaluation import card_check

CARDS = sorted(BUNDLES.glob("*/configs/card_*.json"))


# ------------------------------------------------------------------------------------------------------- cv5


def test_cv5_is_nnunet_default_split():
    """nnU-Net v2 builds its folds with scikit-learn's KFold(5, shuffle=True, random_state=12345) over the sorted
    case identifiers: compare with scikit-learn itself."""
    from sklearn.model_selection import KFold

    keys = sorted(f"img{c}" for c in BTCV_CASES)
    ours = cv_folds()
    for k, (train, val) in enumerate(KFold(n_splits=5, shuffle=True, random_state=12345).split(keys)):
        assert ours[k]["validation"] == tuple(keys[i][3:] for i in val)
        assert ours[k]["training"] == tuple(keys[i][3:] for i in train)


def test_cv5_folds_are_disjoint_and_cover_the_30_cases():
    seen: list[str] = []
    for k in range(CV_FOLDS):
        fold = split_cases("cv5", fold=k)
        assert len(fold["validation"]) == 6 and len(fold["training"]) == 24
        assert not set(fold["validation"]) & set(fold["training"])
        assert set(fold["validation"]) | set(fold["training"]) == set(BTCV_CASES)
        seen += fold["validation"]
    assert sorted(seen) == sorted(BTCV_CASES)  # every case validated exactly once
    assert split_cases("cv5")["validation"] == BTCV_CASES  # without a fold: every case, for out-of-fold scoring


@pytest.fixture
def btcv_raw(tmp_path, tiny_data):
    """A BTCV download layout (RawData/Training/img, label) whose 30 cases are copies of the tiny phantoms."""
    img, lab = tmp_path / "RawData" / "Training" / "img", tmp_path / "RawData" / "Training" / "label"
    img.mkdir(parents=True)
    lab.mkdir(parents=True)
    phantoms = sorted((tiny_data / "imagesTr").glob("*.nii.gz"))
    for i, case in enumerate(BTCV_CASES):
        src = phantoms[i % len(phantoms)]
        os.symlink(src, img / f"img{case}.nii.gz")
        os.symlink(tiny_data / "labelsTr" / src.name, lab / f"label{case}.nii.gz")
    return tmp_path


def test_cv5_datalists_and_their_errors(btcv_raw):
    d = get_datalist(str(btcv_raw), "cv5", fold=3)
    assert [os.path.basename(it["image"]) for it in d["validation"]] == [
        f"img{c}.nii.gz" for c in cv_folds()[3]["validation"]
    ]
    assert d["split"] == "cv5_fold3" and len(d["training"]) == 24
    assert btcv_datalist(btcv_raw, "cv5")["validation"][0]["image"].endswith("img0001.nii.gz")
    with pytest.raises(InputError, match="needs a fold to train"):
        get_datalist(str(btcv_raw), "cv5")
    with pytest.raises(InputError, match="folds belong to --split cv5"):
        get_datalist(str(btcv_raw), "dataset_0", fold=1)
    with pytest.raises(InputError, match="fold '7' does not exist"):
        get_datalist(str(btcv_raw), "cv5", fold="7")
    assert len(get_datalist(str(btcv_raw), "cv5", keys=["validation"])["validation"]) == 30


def test_out_of_fold_leaderboard_runs_each_fold_model_on_its_own_cases(btcv_raw, tmp_path, monkeypatch):
    """``--split cv5 --ckpt NAME=.../fold{fold}/model.pt``: five inference runs, fold k's model on fold k's validation
    cases only, all 30 predictions scored as one entry (here oracle predictions: Dice 1 for every case)."""
    from common.tools import leaderboard as lb

    calls = []

    def fake_inference(bundle, items, out_dir, ckpt=None, configs=(), overrides=None):
        calls.append((ckpt, [os.path.basename(it["image"]) for it in items]))
        out_dir.mkdir(parents=True, exist_ok=True)
        for it in items:
            label = it["image"].replace("/img/img", "/label/label")
            shutil.copy(label, out_dir / (os.path.basename(it["image"]).replace(".nii.gz", "_seg.nii.gz")))
        settings = {"checkpoint": str(ckpt)}
        for c in configs:  # as the real run does: a card among the configs travels with the settings
            settings["card"] = json.loads(open(c, encoding="utf-8").read())["card"]
        return out_dir, "btcv13", settings

    monkeypatch.setattr(lb, "run_bundle_inference", fake_inference)
    card = BUNDLES / "unet_btcv" / "configs" / "card_cv5.json"
    doc = lb.leaderboard(
        ["unet_btcv"],
        dataset_dir=str(btcv_raw),
        split="cv5",
        out=str(tmp_path / "lb"),
        ckpts={"unet_btcv": "/runs/fold{fold}/model.pt"},
        configs={"unet_btcv": [str(card)]},
        overlay_cases=0,
        progress=False,
    )
    assert [c for c, _ in calls] == [f"/runs/fold{k}/model.pt" for k in range(5)]
    for k, (_, cases) in enumerate(calls):
        assert cases == [f"img{c}.nii.gz" for c in cv_folds()[k]["validation"]]
    assert doc["num_cases"] == 30 and doc["split"].startswith("cv5 (out-of-fold")
    res = json.loads((tmp_path / "lb" / "unet_btcv" / "results.json").read_text(encoding="utf-8"))
    assert res["meta"]["inference"]["fold_checkpoints"] == [f"/runs/fold{k}/model.pt" for k in range(5)]
    assert len(res["cases"]) == 30 and doc["bundles"]["unet_btcv"]["mean"]["mean_over_organs"] == 1.0
    # the card's expected number beside the measured one: 1.0 against nnU-Net's 0.8308 +/- 0.02
    assert res["meta"]["card"]["verdict"] == "outside the card's tolerance of +/- 0.020"
    md = (tmp_path / "lb" / "leaderboard.md").read_text(encoding="utf-8")
    assert "| -> card unet_btcv/cv5: outside the card's tolerance of +/- 0.020 | 0.831 |" in md
    assert (
        "| -> published: nnU-Net Revisited (nnU-Net; ResEnc L 0.8335) (5-fold cross-validation on the 30 cases) | 0.831 |"
        in md
    )
    with pytest.raises(InputError, match="needs --split cv5 without --fold"):
        lb.leaderboard(
            ["unetr_btcv"],
            dataset_dir=str(btcv_raw),
            split="cv5",
            fold=1,
            out=str(tmp_path / "x"),
            ckpts={"unetr_btcv": "/runs/fold{fold}/model.pt"},
            progress=False,
        )


# ------------------------------------------------------------------------------------------------------ cards


def test_every_bundle_has_its_cards():
    have = {(p.parent.parent.name, p.name) for p in CARDS}
    for b in ("transunet_btcv", "swin_unet_btcv", "mt_unet_btcv"):
        assert {(b, "card_synapse.json"), (b, "card_dataset_0.json")} <= have
    for b in ("unetr_btcv", "swin_unetr_btcv", "unet_btcv", "mednext_btcv"):
        assert {(b, "card_dataset_0.json"), (b, "card_cv5.json")} <= have


@pytest.mark.parametrize("card_file", CARDS, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_card_pins_existing_settings_consistently(card_file):
    """Every pinned key is a setting the bundle has (a typo would pin nothing), the card's protocol and split are the
    run's, and the card parses with train.json and with inference.json + evaluate.json."""
    from monai.bundle import ConfigParser

    cfg = card_file.parent
    card = json.loads(card_file.read_text(encoding="utf-8"))
    known = set()
    for name in ("train.json", "inference.json", "evaluate.json"):
        known |= set(json.loads((cfg / name).read_text(encoding="utf-8")))
    assert set(card) - {"card"} <= known, set(card) - known
    meta = card["card"]
    assert (meta["protocol"], meta["split"]) == (card["protocol"], card["split"])
    assert card["num_classes"] == (9 if meta["protocol"].startswith("synapse") else 14)
    exp = meta["expected"]
    assert exp is None or (0 < exp["mean_dice"] < 1 and 0 < exp["tolerance"] <= 0.05 and exp["source"])
    assert meta["recipe"] and meta["compute"]
    for files in (["train.json"], ["inference.json", "evaluate.json"]):
        p = ConfigParser()
        p.read_config([str(cfg / f) for f in files] + [str(card_file)])
        assert p["card"]["name"] == meta["name"] and p["split"] == meta["split"]
        assert p["max_epochs"] == card.get("max_epochs", p["max_epochs"])


def test_card_check_verdicts():
    card = {
        "name": "x/synapse",
        "protocol": "synapse8",
        "split": "synapse",
        "expected": {"mean_dice": 0.7748, "tolerance": 0.02, "source": "paper"},
    }
    assert card_check(card, "synapse8", "synapse", 0.760)["verdict"].startswith("within")
    assert card_check(card, "synapse8", "synapse", 0.750)["verdict"].startswith("outside")
    assert card_check(card, "btcv13", "synapse", 0.77)["verdict"].startswith("not comparable")
    assert card_check(card, "synapse8", "dataset_0", 0.77)["verdict"].startswith("not comparable")
    line = card_check({**card, "expected": None}, "synapse8", "synapse", 0.7)["line"]
    assert "no published number" in line and "0.7000" in line


def test_evaluate_prints_and_records_the_card(tiny_data, tmp_path, capsys):
    from bundle_cases import BUNDLE_TINY
    from monai.bundle import ConfigWorkflow

    bundle = "unetr_btcv"
    cfg = BUNDLES / bundle / "configs"
    wf = ConfigWorkflow(
        config_file=[str(cfg / n) for n in ("inference.json", "evaluate.json", "card_dataset_0.json")],
        workflow_type="infer",
        dataset_dir=str(tiny_data),
        output_dir=str(tmp_path / "eval"),
        load_pretrain=False,
        **BUNDLE_TINY[bundle],
    )
    wf.initialize()
    wf.run()
    res = json.loads((tmp_path / "eval" / "results.json").read_text(encoding="utf-8"))
    card = res["meta"]["card"]
    measured = res["summary"]["mean"]["dice"]
    assert card["name"] == "unetr_btcv/dataset_0" and card["measured_mean_dice"] == pytest.approx(measured)
    # the phantoms are not the card's split: the expected number is shown, no verdict is given
    assert (
        card["verdict"] == f"not comparable (card: btcv13, split dataset_0; run: btcv13, split datalist in {tiny_data})"
    )
    out = capsys.readouterr().out
    assert "card unetr_btcv/dataset_0: expected mean Dice 0.8000" in out
    assert "- card: `card unetr_btcv/dataset_0" in (tmp_path / "eval" / "summary.md").read_text(encoding="utf-8")
