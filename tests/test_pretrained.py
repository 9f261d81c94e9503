"""Reproduction through the bundles themselves: every bundle's ``train.json`` fine-tunes from a file in the layout its
paper initialises from (``--pretrained_path``), and full checkpoints of the official TransUNet, Swin-Unet and MT-UNet
training code evaluate through ``inference.json`` + ``evaluate.json`` (``--ckpt_path``).

The files are built here with the official key names and shapes (the builders live beside each network's tests);
nothing is downloaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bundle_cases import BUNDLE_NAMES, BUNDLE_TINY
from conftest import BUNDLES
from monai.bundle import ConfigWorkflow
from official_layouts import (
    expected_mask,
    expected_relative_position_index,
    official_mtunet_checkpoint,
    official_npz_shapes,
    official_swin_checkpoint,
    official_swin_unet_state_dict,
    official_transunet_state_dict,
    ssl_checkpoint,
    write_npz,
)

from common.bundle import bundle_parser
from common.errors import InputError, find_input_error
from common.weights import convert, read_checkpoint

# the tiny bundles' networks in the official builders' terms
_TRANSUNET = dict(block_units=(1, 1, 1), width=32, hidden=32, layers=1, mlp=64)
_SWIN = dict(embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), window=2, img_size=32, patch=4)
_MTUNET_DEPTHS = {"network_def#depths": [2, 2, 2, 2, 2]}  # the official key list has two modules per stage


def _tiny(bundle: str) -> dict:
    return {**BUNDLE_TINY[bundle], **(_MTUNET_DEPTHS if bundle == "mt_unet_btcv" else {})}


def _pretrained_file(bundle: str, path) -> str:
    """A file in the layout the bundle's paper initialises from, for the bundle's tiny network."""
    net = bundle_parser(bundle, _tiny(bundle), "train.json").get_parsed_content("network_def")
    if bundle == "transunet_btcv":  # ImageNet-21k R50+ViT-B_16.npz (Flax names)
        path = path / "R50+ViT-B_16.npz"
        write_npz(path, official_npz_shapes(**_TRANSUNET, heads=2))
    elif bundle == "swin_unet_btcv":  # Microsoft's swin_tiny_patch4_window7_224.pth
        path = path / "swin_tiny_patch4_window7_224.pth"
        torch.save({"model": official_swin_checkpoint(**_SWIN)}, path)
    elif bundle == "swin_unetr_btcv":  # the self-supervised model_swinvit.pt
        path = path / "model_swinvit.pt"
        torch.manual_seed(5)
        torch.save(
            ssl_checkpoint(
                type(net)(in_channels=1, out_channels=14, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
            ),
            path,
        )
    elif bundle == "mt_unet_btcv":  # a checkpoint of the official MT-UNet training script
        path = path / "mtunet_official.pth"
        torch.save(official_mtunet_checkpoint(net), path)
    else:  # UNETR, nnU-Net-style U-Net: a checkpoint of the same network
        path = path / "model.pt"
        torch.manual_seed(5)
        with torch.no_grad():  # in place: DynUNet's state dict names some tensors twice
            for p in net.parameters():
                p.normal_()
        torch.save(net.state_dict(), path)
    return str(path)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_train_json_fine_tunes_from_the_official_layout(bundle, tiny_data, tmp_path, capsys):
    path = _pretrained_file(bundle, tmp_path)
    overrides = dict(_tiny(bundle), max_epochs=1, val_interval=10, resume=False)
    if bundle in ("transunet_btcv", "swin_unet_btcv", "mt_unet_btcv"):
        overrides["slices_per_epoch"] = overrides["batch_size"]  # one iteration
    wf = ConfigWorkflow(
        config_file=str(BUNDLES / bundle / "configs" / "train.json"),
        workflow_type="train",
        dataset_dir=str(tiny_data),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        pretrained_path=path,
        **overrides,
    )
    wf.initialize()
    net = wf.parser.get_parsed_content("network")
    assert f"loaded pretrained weights from {path}" in capsys.readouterr().out
    fresh = bundle_parser(bundle, _tiny(bundle), "train.json").get_parsed_content("network_def")
    expected = convert(read_checkpoint(path), fresh).tensors
    state = net.state_dict()
    assert expected and all(torch.equal(state[k].cpu(), v.to(state[k].dtype)) for k, v in expected.items())
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration >= 1
    moved = [k for k, v in expected.items() if v.is_floating_point() and not torch.equal(net.state_dict()[k].cpu(), v)]
    assert moved, "the training step changed none of the loaded weights"
    wf.finalize()


def _official_full_checkpoint(bundle: str, path) -> str:
    """A 9-class checkpoint as the official training script saves it (``torch.save(model.state_dict())``)."""
    g = torch.Generator().manual_seed(11)
    if bundle == "transunet_btcv":
        shapes = official_transunet_state_dict(
            **_TRANSUNET, grid=2, n_classes=9, decoder_head=16, decoder=(16, 8, 8, 4)
        )
        state = {k: torch.randn(s, generator=g) if s else torch.tensor(7) for k, s in shapes.items()}
        for k in state:
            if k.endswith("running_var"):
                state[k] = state[k].abs() + 0.5
        name = "epoch_149.pth"
    elif bundle == "swin_unet_btcv":
        state = {}
        for k, s in official_swin_unet_state_dict(**_SWIN, n_classes=9).items():
            if k.endswith("attn_mask"):
                res = 8 // 2 ** int(k.split(".")[2]) if ".layers." in k else 8 // 2 ** (2 - int(k.split(".")[2]))
                state[k] = expected_mask(res, 2, 1)
            elif k.endswith("relative_position_index"):
                state[k] = expected_relative_position_index(2)
            else:
                state[k] = torch.randn(s, generator=g) * 0.2
        name = "best_model.pth"
    else:
        net = bundle_parser(bundle, {**_tiny(bundle), "num_classes": 9}).get_parsed_content("network_def")
        state = official_mtunet_checkpoint(net)
        for k in state:
            if k.endswith("running_var"):
                state[k] = state[k].abs() + 0.5
        name = "mtunet_official.pth"
    torch.save(state, path / name)
    return str(path / name)


@pytest.mark.parametrize("bundle", ["transunet_btcv", "swin_unet_btcv", "mt_unet_btcv"])
def test_official_checkpoint_evaluates_through_the_bundle(bundle, tiny_data, tmp_path):
    ckpt = _official_full_checkpoint(bundle, tmp_path)
    cfg = BUNDLES / bundle / "configs"
    files = [str(cfg / n) for n in ("inference.json", "evaluate.json", "synapse.json")]
    wf = ConfigWorkflow(
        config_file=files,
        workflow_type="infer",
        dataset_dir=str(tiny_data),
        output_dir=str(tmp_path / "eval"),
        ckpt_path=ckpt,
        **_tiny(bundle),
    )
    wf.initialize()
    wf.run()
    res = json.loads((tmp_path / "eval" / "results.json").read_text(encoding="utf-8"))
    assert res["meta"]["protocol"] == "synapse8" and len(res["cases"]) == 1
    net = wf.parser.get_parsed_content("network")
    fresh = bundle_parser(bundle, {**_tiny(bundle), "num_classes": 9}).get_parsed_content("network_def")
    conversion = convert(read_checkpoint(ckpt), fresh)
    assert conversion.layout.startswith("official") and set(conversion.tensors) == set(net.state_dict())
    assert all(torch.equal(net.state_dict()[k].cpu(), v) for k, v in conversion.tensors.items())
    wf.finalize()

    # the same 9-class file under the default 14-class configuration: one clear refusal, nothing written
    out = tmp_path / "pred14"
    wf = ConfigWorkflow(
        config_file=str(cfg / "inference.json"),
        workflow_type="infer",
        dataset_dir=str(tiny_data / "imagesTr"),
        output_dir=str(out),
        ckpt_path=ckpt,
        **_tiny(bundle),
    )
    wf.initialize()
    with pytest.raises(Exception) as exc:
        wf.run()
    err = find_input_error(exc.value)
    assert isinstance(err, InputError) and "predicts 9 classes, this configuration 14" in str(err)
    assert not out.exists() or not any(out.iterdir())


def test_synapse_tiny_values_are_probabilities_of_a_real_forward(tiny_data):
    """Guard for the fixture above: random official weights still give a finite forward of the right shape."""
    bundle = "transunet_btcv"
    net = bundle_parser(bundle, {**_tiny(bundle), "num_classes": 9}).get_parsed_content("network_def")
    y = net.eval()(torch.zeros(2, 1, 32, 32))
    assert y.shape == (2, 9, 32, 32) and bool(np.isfinite(y.detach().numpy()).all())
