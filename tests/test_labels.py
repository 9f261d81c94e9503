import numpy as np
import pytest
import torch

from common.labels import (
    BTCV_NUM_CLASSES,
    BTCV_ORGANS,
    SYNAPSE_ORGAN_ORDER,
    channel_def,
    from_btcv_lut,
    organ,
    remap_labels,
    to_btcv_lut,
)
from common.protocols import protocol_organs


def test_btcv_map_is_the_challenge_order():
    names = [o.name for o in BTCV_ORGANS]
    assert names == [
        "spleen",
        "right kidney",
        "left kidney",
        "gallbladder",
        "esophagus",
        "liver",
        "stomach",
        "aorta",
        "inferior vena cava",
        "portal and splenic vein",
        "pancreas",
        "right adrenal gland",
        "left adrenal gland",
    ]
    assert [o.id for o in BTCV_ORGANS] == list(range(1, 14))
    assert BTCV_NUM_CLASSES == 14
    assert len({o.colour for o in BTCV_ORGANS}) == 13
    assert channel_def()["0"] == "background" and channel_def()["13"] == "left adrenal gland"


def test_synapse_subset_in_paper_column_order():
    assert SYNAPSE_ORGAN_ORDER == (
        "aorta",
        "gallbladder",
        "kidney_left",
        "kidney_right",
        "liver",
        "pancreas",
        "spleen",
        "stomach",
    )
    assert [k for k, _, _ in protocol_organs("synapse8")] == list(SYNAPSE_ORGAN_ORDER)
    assert channel_def("synapse8") == {
        "0": "background",
        "1": "aorta",
        "2": "gallbladder",
        "3": "left kidney",
        "4": "right kidney",
        "5": "liver",
        "6": "pancreas",
        "7": "spleen",
        "8": "stomach",
    }


def test_synapse_mapping_round_trip_and_dropped_organs():
    to_s, to_b = from_btcv_lut("synapse8"), to_btcv_lut("synapse8")
    btcv = np.arange(14)
    syn = to_s[btcv]
    for key in ("esophagus", "ivc", "portal_splenic_vein", "adrenal_right", "adrenal_left"):
        assert syn[organ(key).id] == 0
    kept = [organ(k).id for k in SYNAPSE_ORGAN_ORDER]
    assert list(to_b[to_s[kept]]) == kept
    assert syn[organ("aorta").id] == 1 and syn[organ("stomach").id] == 8


def test_remap_labels_numpy_and_torch_and_bounds():
    lut = from_btcv_lut("synapse8")
    a = np.array([[0, 6, 8], [13, 1, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(remap_labels(a, lut), [[0, 5, 1], [0, 7, 8]])
    t = remap_labels(torch.tensor(a), lut)
    assert isinstance(t, torch.Tensor) and t.tolist() == [[0, 5, 1], [0, 7, 8]]
    with pytest.raises(ValueError, match="0..13"):
        remap_labels(np.array([14]), lut)


def test_id_spaces_are_one_registry():
    """Both id spaces come from ID_SPACES: the btcv13 tables are the identity, a class count names its space,
    and an unknown space or count is one clear error naming the known ones."""
    from common.labels import BTCV13, ID_SPACES, SYNAPSE8, id_space_of, organ_names

    assert list(to_btcv_lut(BTCV13)) == list(range(14)) == list(from_btcv_lut(BTCV13))
    assert id_space_of(14) == BTCV13 and id_space_of(9) == SYNAPSE8
    assert organ_names(SYNAPSE8) == [organ(k).name for k in ID_SPACES[SYNAPSE8]]
    with pytest.raises(ValueError, match="btcv13, synapse8"):
        to_btcv_lut("synapse9")
    with pytest.raises(ValueError, match="no label id space has 5 classes"):
        id_space_of(5)
