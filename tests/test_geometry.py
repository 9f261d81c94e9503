"""Inference on the real CT sample: output on the input's exact grid, and orientation-independent labels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cases import BUNDLE_TINY
from conftest import BUNDLES
from monai.bundle import ConfigParser
from test_bundles import BUNDLE_NAMES, run_workflow


def perturbed_network(bundle: str, generator: torch.Generator, extra_configs=(), overrides=None):
    """The bundle's tiny network (its inference.json, ``extra_configs``, the tiny overrides and ``overrides``) with
    every weight moved by 0.2 x N(0, 1) from ``generator``, so an untrained model predicts many classes and its
    outputs differ between inputs. Returns the network and the parser."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / "inference.json"), *map(str, extra_configs)])
    for k, v in {**BUNDLE_TINY[bundle], **(overrides or {})}.items():
        parser[k] = v
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():
        for t in net.parameters():
            t.add_(0.2 * torch.randn(t.shape, generator=generator))
    return net, parser


def random_checkpoint(bundle: str, path, extra_configs=(), overrides=None) -> str:
    """Weights of the bundle's tiny network, perturbed so the untrained model predicts many classes."""
    net, _ = perturbed_network(bundle, torch.Generator().manual_seed(0), extra_configs, overrides)
    torch.save(net.state_dict(), str(path))
    return str(path)


def _lps_copy(src: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same physical image stored with the x and y axes reversed (LPS-like storage)."""
    data = np.asarray(src.dataobj)[::-1, ::-1, :].copy()
    nx, ny = data.shape[:2]
    flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
    return nib.Nifti1Image(data, src.affine @ flip)


def _geometry_and_orientation(bundle: str, image, tmp_path) -> None:
    """Inference of ``image`` and of the same image stored LPS: outputs on each input's exact grid, same labels."""
    src = nib.load(str(image))
    lps_dir = tmp_path / "lps"
    lps_dir.mkdir()
    nib.save(_lps_copy(src), str(lps_dir / "image_lps.nii.gz"))
    ckpt = random_checkpoint(bundle, tmp_path / "random.pt")
    outs = {}
    for name, inp in (("ras", image), ("lps", lps_dir / "image_lps.nii.gz")):
        out = tmp_path / f"out_{name}"
        run_workflow(
            bundle,
            ("inference.json",),
            "infer",
            dataset_dir=str(inp),
            output_dir=str(out),
            ckpt_path=ckpt,
            **BUNDLE_TINY[bundle],
        )
        outs[name] = nib.load(str(next(out.glob("*_seg.nii.gz"))))
    ras, lps = outs["ras"], outs["lps"]
    # the output has the input's exact shape and affine
    assert ras.shape == src.shape
    np.testing.assert_allclose(ras.affine, src.affine, atol=1e-5)
    lps_src = nib.load(str(lps_dir / "image_lps.nii.gz"))
    assert lps.shape == lps_src.shape
    np.testing.assert_allclose(lps.affine, lps_src.affine, atol=1e-5)
    # the LPS copy's labels, brought back to RAS storage, are the same labels
    a = np.asarray(ras.dataobj)
    b = np.asarray(lps.dataobj)[::-1, ::-1, :]
    assert len(np.unique(a)) > 2, "the random network should predict several classes"
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_real_sample_geometry_and_orientation(bundle, sample_ct, tmp_path):
    _geometry_and_orientation(bundle, sample_ct / "image.nii.gz", tmp_path)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_phantom_geometry_and_orientation(bundle, tiny_data, tmp_path):
    """The same check on a generated phantom, so it runs wherever the real CT is missing."""
    _geometry_and_orientation(bundle, tiny_data / "imagesTr" / "phantom0001.nii.gz", tmp_path)
