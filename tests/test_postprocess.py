"""Connected-component cleanup: keep-largest, small-blob removal in ml, and the ``auto`` decision taken on
validation Dice and kept beside the checkpoint."""

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.errors import InputError
from common.evaluation import SegmentationReport
from common.labels import organ
from common.postprocess import OrganCleanupd, decide, decision_path, keep_largest, remove_small

LIVER, SPLEEN = organ("liver").id, organ("spleen").id


def _blobs() -> np.ndarray:
    """Liver: a 10-voxel bar and a 3-voxel bar; spleen: 2 voxels touching only at a corner (one component)."""
    lab = np.zeros((12, 10, 8), np.int64)
    lab[1, 1, 0:8] = LIVER
    lab[1, 2, 0:2] = LIVER
    lab[8, 8, 1:4] = LIVER
    lab[5, 5, 5] = SPLEEN
    lab[6, 6, 6] = SPLEEN
    return lab


def test_keep_largest_and_remove_small_by_hand():
    lab = _blobs()
    kept = keep_largest(lab, [LIVER, SPLEEN])
    assert (kept == LIVER).sum() == 10 and (kept[8, 8] == 0).all()  # the 3-voxel bar is gone
    assert (kept == SPLEEN).sum() == 2, "corner neighbours are one component (26-connectivity)"
    assert (lab == LIVER).sum() == 13, "the input is not modified"
    small = remove_small(lab, [LIVER, SPLEEN], 3)
    assert (small == LIVER).sum() == 13 and (small == SPLEEN).sum() == 0  # only the 2-voxel spleen is under 3


def test_cleanup_transform_modes_on_the_input_grid(tmp_path):
    lab = MetaTensor(
        torch.as_tensor(_blobs()[None], dtype=torch.float32), affine=torch.diag(torch.tensor([2.0, 2, 2, 1]))
    )
    off = OrganCleanupd(mode="off")({"pred": lab})["pred"]
    assert torch.equal(off, lab)
    largest = OrganCleanupd(mode="largest")({"pred": lab})["pred"]
    assert isinstance(largest, MetaTensor) and torch.equal(largest.affine, lab.affine)
    assert int((largest == LIVER).sum()) == 10
    # 0.008 ml voxels: 0.02 ml is 3 voxels, so the 2-voxel spleen goes and both liver bars stay
    ml = OrganCleanupd(mode=0.02)({"pred": lab})["pred"]
    assert int((ml == LIVER).sum()) == 13 and int((ml == SPLEEN).sum()) == 0
    for bad in ("biggest", 0, -1):
        with pytest.raises(InputError, match="cleanup must be one of"):
            OrganCleanupd(mode=bad)


def test_auto_keeps_largest_only_where_validation_dice_rises(tmp_path):
    """Liver: the prediction adds a spurious blob (keep-largest raises Dice); spleen: the organ really has two
    parts in the ground truth (keep-largest lowers Dice). The report decides liver only, writes it beside the
    checkpoint, and inference with ``auto`` cleans the liver alone; another checkpoint is refused."""
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    gt = np.zeros((16, 16, 8), np.int64)
    gt[2:6, 2:6, 2:6] = LIVER
    gt[9:12, 9:12, 1:3] = SPLEEN
    gt[9:12, 9:12, 5:7] = SPLEEN
    pred = gt.copy()
    pred[13:15, 1:3, 6:8] = LIVER  # a spurious liver blob
    aff = np.eye(4)
    report = SegmentationReport(tmp_path / "eval", decide_cleanup=True, ckpt=str(ckpt), print_table=False)
    report.add_case(
        {
            "pred": MetaTensor(torch.as_tensor(pred[None]), affine=torch.as_tensor(aff)),
            "label_file": MetaTensor(torch.as_tensor(gt[None]), affine=torch.as_tensor(aff)),
        }
    )
    result = report.finish()
    doc = json.loads(decision_path(ckpt).read_text(encoding="utf-8"))
    assert (
        doc["keep_largest"] == ["liver"] and doc["keep_largest_ids"] == [LIVER] == result["cleanup"]["keep_largest_ids"]
    )
    assert doc["mean_dice"]["liver"]["keep_largest"] == 1.0 > doc["mean_dice"]["liver"]["as_predicted"]
    assert doc["mean_dice"]["spleen"]["keep_largest"] < doc["mean_dice"]["spleen"]["as_predicted"] == 1.0

    auto = OrganCleanupd(mode="auto", ckpt=str(ckpt))({"pred": torch.as_tensor(pred[None])})["pred"][0].numpy()
    assert (auto[13:15, 1:3, 6:8] == 0).all() and ((auto == SPLEEN) == (gt == SPLEEN)).all()
    ckpt.write_bytes(b"other weights")
    with pytest.raises(InputError, match="decided for another checkpoint"):
        OrganCleanupd(mode="auto", ckpt=str(ckpt))
    decision_path(ckpt).unlink()
    with pytest.raises(InputError, match="no cleanup decision"):
        OrganCleanupd(mode="auto", ckpt=str(ckpt))
    # a decision from the means alone
    assert decide({"liver": (0.5, 0.6), "spleen": (0.9, 0.8)}, ckpt, {"liver": 6, "spleen": 1})["keep_largest"] == [
        "liver"
    ]
