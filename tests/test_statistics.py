"""Organ statistics: volume in ml and HU mean / std per organ on the input's own grid, by hand and through a
bundle's inference (``--statistics true``)."""

import csv

import nibabel as nib
import numpy as np
import pytest
from bundle_cases import BUNDLE_TINY, TINY_2D_SETTINGS
from conftest import BUNDLES
from monai.bundle import ConfigWorkflow
from test_geometry import random_checkpoint

from common.labels import BTCV_ORGANS, SYNAPSE8, organ
from common.statistics import organ_statistics, statistics_csv


def test_statistics_by_hand():
    """A 4 x 3 x 2 grid of 2 x 2 x 3 mm voxels (0.012 ml each): 5 liver voxels, 2 spleen voxels."""
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])  # a flipped axis: the volume is the determinant's size
    labels = np.zeros((4, 3, 2), np.int64)
    image = np.arange(24, dtype=np.float32).reshape(4, 3, 2) * 10 - 100
    liver, spleen = organ("liver").id, organ("spleen").id
    labels[0, :, 0] = liver
    labels[1, :2, 1] = liver
    labels[3, 2, :] = spleen
    rows = {r["organ"]: r for r in organ_statistics(labels, affine, image)}
    hu = [-100, -80, -60, -30, -10]  # image at the five liver voxels
    assert rows["liver"]["voxels"] == 5 and rows["liver"]["volume_ml"] == pytest.approx(5 * 0.012)
    assert rows["liver"]["hu_mean"] == pytest.approx(np.mean(hu)) and rows["liver"]["hu_std"] == pytest.approx(
        np.std(hu)
    )
    assert rows["spleen"]["volume_ml"] == pytest.approx(0.024) and rows["spleen"]["hu_mean"] == pytest.approx(125.0)
    assert rows["aorta"] == {
        "organ": "aorta",
        "label": 8,
        "voxels": 0,
        "volume_ml": 0.0,
        "hu_mean": None,
        "hu_std": None,
    }
    assert list(rows) == [o.key for o in BTCV_ORGANS]
    lines = statistics_csv(list(rows.values())).splitlines()
    assert lines[0] == "organ,label,voxels,volume_ml,hu_mean,hu_std" and lines[8] == "aorta,8,0,0,,"
    # synapse8 ids: class 5 is the liver
    syn = {r["organ"]: r for r in organ_statistics(np.where(labels == liver, 5, 0), affine, image, SYNAPSE8)}
    assert syn["liver"]["voxels"] == 5 and len(syn) == 8


@pytest.mark.parametrize("bundle", ["unetr_btcv", "transunet_btcv"])
def test_inference_writes_the_statistics_of_its_labels(bundle, tiny_data, tmp_path):
    """``--statistics true``: ``<case>_stats.csv`` beside ``<case>_seg.nii.gz`` holds, for every organ, the
    voxels, volume and HU of the written label map over the input file, computed here with nibabel alone."""
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    ckpt = random_checkpoint(bundle, tmp_path / "w.pt")
    tiny = dict(BUNDLE_TINY[bundle])
    wf = ConfigWorkflow(
        config_file=str(BUNDLES / bundle / "configs" / "inference.json"),
        workflow_type="infer",
        logging_file=False,
        dataset_dir=str(image),
        output_dir=str(tmp_path / "out"),
        ckpt_path=ckpt,
        statistics=True,
        **tiny,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    seg = nib.load(str(tmp_path / "out" / "phantom0000_seg.nii.gz"))
    src = nib.load(str(image))
    labels, hu = np.asarray(seg.dataobj), src.get_fdata()
    assert labels.shape == hu.shape and len(np.unique(labels)) > 2, "a prediction worth checking"
    with open(tmp_path / "out" / "phantom0000_stats.csv", encoding="utf-8") as f:
        rows = {r["organ"]: r for r in csv.DictReader(f)}
    voxel_ml = abs(np.linalg.det(src.affine[:3, :3])) / 1000
    for o in BTCV_ORGANS:
        mask = labels == o.id
        r = rows[o.key]
        assert int(r["voxels"]) == int(mask.sum()) and int(r["label"]) == o.id
        assert float(r["volume_ml"]) == pytest.approx(mask.sum() * voxel_ml, rel=1e-5)
        if mask.any():
            assert float(r["hu_mean"]) == pytest.approx(hu[mask].mean(), rel=1e-5, abs=1e-3)
            assert float(r["hu_std"]) == pytest.approx(hu[mask].std(), rel=1e-5, abs=1e-3)
        else:
            assert r["hu_mean"] == r["hu_std"] == ""


def test_statistics_are_off_by_default(tiny_data, tmp_path):
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    wf = ConfigWorkflow(
        config_file=str(BUNDLES / "transunet_btcv" / "configs" / "inference.json"),
        workflow_type="infer",
        logging_file=False,
        dataset_dir=str(image),
        output_dir=str(tmp_path / "out"),
        load_pretrain=False,
        **TINY_2D_SETTINGS,
        **{k: v for k, v in BUNDLE_TINY["transunet_btcv"].items() if k not in TINY_2D_SETTINGS},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["phantom0000_seg.nii.gz"]
