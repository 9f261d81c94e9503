"""Ensembles (``common.tools.ensemble``): the mean of the members' softmax probabilities on each input's grid, for
checkpoints of one bundle and across bundles, and as one leaderboard entry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from bundle_cases import BUNDLE_TINY, TINY_2D_SETTINGS, constant_label_network
from conftest import BUNDLES
from monai.bundle import ConfigWorkflow
from test_geometry import random_checkpoint

from common.errors import InputError
from common.labels import organ
from common.tools.ensemble import Member, ensemble_inference, members_from_args


def _labels(folder, name="phantom0000"):
    return np.asarray(nib.load(str(folder / f"{name}_seg.nii.gz")).dataobj)


@pytest.mark.parametrize("bundle", ["unetr_btcv", "transunet_btcv"])
def test_an_ensemble_of_one_member_is_the_bundles_own_inference(bundle, tiny_data, tmp_path):
    """One member, its probabilities inverted to the input's grid then the argmax: exactly the labels (and the
    grid) of the bundle's inference.json, the 3D default path and the 2D fast label path alike."""
    ckpt = random_checkpoint(bundle, tmp_path / "w.pt")
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    wf = ConfigWorkflow(
        config_file=str(BUNDLES / bundle / "configs" / "inference.json"),
        workflow_type="infer",
        logging_file=False,
        dataset_dir=str(image),
        output_dir=str(tmp_path / "bundle"),
        ckpt_path=ckpt,
        **BUNDLE_TINY[bundle],
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    settings = ensemble_inference(
        [Member(bundle, ckpt, overrides=dict(BUNDLE_TINY[bundle]))], [str(image)], tmp_path / "ensemble"
    )
    assert settings["ensemble"] == [{"bundle": bundle, "tta": 1, "autocast": None, "checkpoint": ckpt}]
    ours, theirs = (nib.load(str(p / "phantom0000_seg.nii.gz")) for p in (tmp_path / "ensemble", tmp_path / "bundle"))
    assert np.allclose(ours.affine, theirs.affine) and ours.shape == theirs.shape == nib.load(str(image)).shape
    assert len(np.unique(np.asarray(theirs.dataobj))) > 2, "the random network must predict several classes"
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


def _softmax(logits):
    e = np.exp(np.asarray(logits, dtype=np.float64))
    return e / e.sum()


@pytest.mark.parametrize("liver_score", [3.0, 0.6])
def test_members_of_three_bundles_are_averaged_as_probabilities_not_votes(liver_score, tiny_data, tmp_path):
    """TransUNet says liver (logit ``liver_score``), a 3D network in the UNETR bundle and Swin-Unet say spleen
    (logit 0.5): two votes to one for spleen, yet the mean probability picks liver when its one member is sure
    enough (3.0) and spleen when not (0.6), as computed here by hand."""
    liver, spleen = organ("liver").id, organ("spleen").id
    members = [
        Member(
            "transunet_btcv",
            overrides={
                **TINY_2D_SETTINGS,
                "load_pretrain": False,
                "network_def": constant_label_network(liver, liver_score),
            },
        ),
        Member(
            "unetr_btcv",
            overrides={
                **{k: v for k, v in BUNDLE_TINY["unetr_btcv"].items() if not k.startswith("network_def#")},
                "load_pretrain": False,
                "network_def": {"_target_": "bundle_cases.ConstantLabelNet", "label": spleen, "score": 0.5},
            },
        ),
        Member(
            "swin_unet_btcv",
            overrides={**TINY_2D_SETTINGS, "load_pretrain": False, "network_def": constant_label_network(spleen, 0.5)},
        ),
    ]
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    ensemble_inference(members, [str(image)], tmp_path)
    mean = (
        _softmax(np.where(np.arange(14) == liver, liver_score, 0))
        + 2 * _softmax(np.where(np.arange(14) == spleen, 0.5, 0))
    ) / 3
    expected = int(np.argmax(mean))
    assert expected == (liver if liver_score == 3.0 else spleen)
    labels = _labels(tmp_path)
    # the UNETR bundle predicts the foreground crop of its preprocessing and background around it (its own output
    # is background there, so it votes background with certainty): the body is the members' mean, the rest 0
    assert set(np.unique(labels)) == {0, expected}
    assert (labels[16:48, 16:48, 7:21] == expected).all()


def test_members_must_share_their_classes_and_auto_cleanup_is_refused(tiny_data, tmp_path):
    image = str(tiny_data / "imagesTr" / "phantom0000.nii.gz")
    tiny = {**TINY_2D_SETTINGS, "load_pretrain": False}
    members = [
        Member("transunet_btcv", overrides={**tiny, "network_def": constant_label_network(6)}),
        Member(
            "transunet_btcv",
            configs=[str(BUNDLES / "transunet_btcv" / "configs" / "synapse.json")],
            overrides={**tiny, "network_def": constant_label_network(6)},
        ),
    ]
    with pytest.raises(InputError, match="different id spaces: transunet_btcv 14 classes, transunet_btcv 9 classes"):
        ensemble_inference(members, [image], tmp_path)
    with pytest.raises(InputError, match="--cleanup auto is decided for one checkpoint"):
        ensemble_inference(members[:1], [image], tmp_path, cleanup="auto")
    with pytest.raises(InputError, match="unknown bundle 'nonet'"):
        members_from_args(["nonet=x.pt"])


def test_the_leaderboard_scores_an_ensemble_as_one_entry(tiny_data, tmp_path):
    from common.tools.leaderboard import leaderboard

    a = random_checkpoint("unetr_btcv", tmp_path / "a.pt")
    tiny = dict(BUNDLE_TINY["unetr_btcv"])
    doc = leaderboard(
        ensembles={"pair": f"unetr_btcv={a},unetr_btcv={a}"},
        dataset_dir=str(tiny_data),
        split="dataset_0",
        out=str(tmp_path / "lb"),
        overrides={"unetr_btcv": tiny},
        progress=False,
        overlay_cases=0,
    )
    assert list(doc["bundles"]) == ["pair"]
    res = json.loads((tmp_path / "lb" / "pair" / "results.json").read_text(encoding="utf-8"))
    assert [m["checkpoint"] for m in res["meta"]["inference"]["ensemble"]] == [a, a]
