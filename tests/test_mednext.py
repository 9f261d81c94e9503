"""MedNeXt-L as the official code builds it (MONAI's MedNeXt with the official down-sampling blocks), and the deep
supervision loss over its outputs at five resolutions."""

from __future__ import annotations

import pytest
import torch

from common.losses import StackedDeepSupervisionLoss
from common.networks.mednext import mednext


@pytest.mark.parametrize("kernel_size, official", [(3, 61_781_194), (5, 62_994_826)])
def test_mednext_l_has_the_official_parameter_count(kernel_size, official):
    """The official MedNeXt-L (MIC-DKFZ/MedNeXt ``create_mednextv1_large``, 1 input channel, 2 classes, deep
    supervision) has 61.8 M parameters with kernel 3 and 63.0 M with kernel 5 (its README), exactly these counts
    less the official network's 1-element dummy tensor. MONAI's factory network has 52,480 fewer: its down blocks
    expand by the ratio of the stage they leave, the official ones by the ratio of the stage they enter."""
    net = mednext(out_channels=2, kernel_size=kernel_size, deep_supervision=True)
    assert sum(p.numel() for p in net.parameters()) == official
    assert [b.conv2.out_channels // b.conv2.in_channels for b in net.down_blocks] == [4, 8, 8, 8]


def test_deep_supervision_outputs_five_resolutions_in_training_and_one_in_evaluation():
    net = mednext(out_channels=3, init_filters=4, blocks_down=(1, 1, 1, 1), blocks_bottleneck=1, blocks_up=(1, 1, 1, 1))
    x = torch.randn(1, 1, 32, 32, 16)
    outs = net.train()(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(32 // 2**i, 32 // 2**i, 16 // 2**i) for i in range(5)]
    assert net.eval()(x).shape == (1, 3, 32, 32, 16)


def test_deep_supervision_loss_weights_the_resolutions_one_half_quarter_normalised():
    """Each output is scored against the target resized to it (nearest neighbour), weighted 1, 1/2, 1/4 ...
    normalised to sum to 1: the same figure computed here by hand."""
    torch.manual_seed(0)
    inner = torch.nn.MSELoss()
    target = torch.randint(0, 3, (1, 1, 16, 16, 8)).float()
    outs = [torch.randn(1, 1, 16 // 2**i, 16 // 2**i, 8 // 2**i) for i in range(3)]
    by_hand = sum(
        w * inner(o, torch.nn.functional.interpolate(target, size=o.shape[2:], mode="nearest-exact"))
        for w, o in zip([4 / 7, 2 / 7, 1 / 7], outs)
    )
    got = StackedDeepSupervisionLoss(inner)(tuple(outs), target)
    assert torch.allclose(got, by_hand)
    assert torch.allclose(StackedDeepSupervisionLoss(inner)(outs[0], target), inner(outs[0], target))


TINY = dict(out_channels=3, init_filters=4, blocks_down=(1, 1, 1, 1), blocks_bottleneck=1, blocks_up=(1, 1, 1, 1))


def _official_key(ours: str) -> str:
    """The official MedNextV1 name of a MONAI MedNeXt key (MIC-DKFZ/MedNeXt, ``MedNextV1.py``): encoder stages
    ``enc_block_i``, down blocks ``down_i``, the decoder counted down from the bottleneck (``up_3`` and
    ``dec_block_3`` first), deep-supervision heads ``out_1`` (1/2 resolution) .. ``out_4`` (1/16)."""
    import re

    for rx, to in (
        (r"^enc_stages\.(\d)\.", lambda m: f"enc_block_{m[1]}."),
        (r"^down_blocks\.(\d)\.", lambda m: f"down_{m[1]}."),
        (r"^up_blocks\.(\d)\.", lambda m: f"up_{3 - int(m[1])}."),
        (r"^dec_stages\.(\d)\.", lambda m: f"dec_block_{3 - int(m[1])}."),
        (r"^out_blocks\.(\d)\.", lambda m: f"out_{4 - int(m[1])}."),
    ):
        m = re.match(rx, ours)
        if m:
            return to(m) + ours[m.end() :]
    return ours


def test_a_checkpoint_of_the_official_code_loads_and_predicts_the_same(tmp_path):
    """The official trainer saves ``{"state_dict": ...}`` with its own module names and a ``dummy_tensor``: it
    loads into the bundle's network for inference and gives the outputs of the network it was taken from."""
    from common.weights import load_weights

    torch.manual_seed(0)
    source = mednext(**TINY).eval()
    official = {_official_key(k): v for k, v in source.state_dict().items()}
    assert (
        "up_3.conv1.weight" in official
        and "dec_block_0.0.conv1.weight" in official
        and "out_4.conv_out.weight" in official
    )
    official["dummy_tensor"] = torch.ones(1)
    torch.save({"epoch": 3, "state_dict": official}, tmp_path / "model_final_checkpoint.pt")
    target = mednext(**TINY).eval()
    report = load_weights(target, tmp_path / "model_final_checkpoint.pt", purpose="inference")
    assert report["layout"] == "official MedNeXt" and list(report["ignored"]) == ["dummy_tensor"]
    x = torch.randn(1, 1, 32, 32, 32)
    assert torch.equal(target(x), source(x))


def test_upkern_initialises_kernel_5_from_kernel_3_for_training_only(tmp_path):
    """UpKern: every kernel-3 depthwise kernel resized trilinearly to 5^3, the rest copied; for --pretrained_path
    (training), while inference with those weights is refused with one message."""
    from common.errors import InputError
    from common.weights import load_weights, with_pretrained

    torch.manual_seed(0)
    k3 = mednext(**TINY, kernel_size=3)
    torch.save(k3.state_dict(), tmp_path / "k3.pt")
    k5 = with_pretrained(mednext(**TINY, kernel_size=5), tmp_path / "k3.pt")
    w3, w5 = k3.state_dict(), k5.state_dict()
    key = "enc_stages.1.0.conv1.weight"
    assert w3[key].shape[2:] == (3, 3, 3) and w5[key].shape[2:] == (5, 5, 5)
    assert torch.allclose(w5[key], torch.nn.functional.interpolate(w3[key], size=(5, 5, 5), mode="trilinear"))
    assert torch.equal(w5["stem.weight"], w3["stem.weight"]) and torch.equal(
        w5["out_0.conv_out.bias"], w3["out_0.conv_out.bias"]
    )
    with pytest.raises(InputError, match="initialise training, they do not predict"):
        load_weights(mednext(**TINY, kernel_size=5), tmp_path / "k3.pt", purpose="inference")
