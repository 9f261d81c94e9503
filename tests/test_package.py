"""`python -m common.tools.package`: a bundle packaged with `common` vendored runs where the project is not importable,
and predicts the same labels as the bundle run from this repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cases import BUNDLE_NAMES, BUNDLE_TINY, FAMILIES
from conftest import BUNDLES
from monai.bundle import ConfigWorkflow
from test_geometry import random_checkpoint

from common.errors import InputError
from common.tools.package import main, package_bundle, rewrite_config, vendored_name

DECOY = "raise ImportError('the project package common was imported by a packaged bundle')\n"


def test_rewrite_config_replaces_every_use_of_common():
    cfg = {
        "imports": ["$import os", "$import common"],
        "bundle_root": "$common.bundle.bundle_root()",
        "x": {"_target_": "common.transforms.btcv_preprocessing", "keys": "image"},
        "y": "$common.bundle.as_bool(@a) and not common.bundle.as_bool(@b)",
        "z": "plain text mentioning common.phantom stays",
        "w": "$os.path.join(@bundle_root, 'common.txt')",
    }
    out = rewrite_config(cfg, "b_common")
    assert out["imports"][0] == "$import os" and "$import common" not in out["imports"]
    assert "common.bundle" not in out["bundle_root"] and out["bundle_root"].startswith("$")
    assert out["x"]["_target_"] == "$@b_common.transforms.btcv_preprocessing"
    assert out["y"] == "$@b_common.bundle.as_bool(@a) and not @b_common.bundle.as_bool(@b)"
    assert out["z"] == cfg["z"] and out["w"] == cfg["w"]
    assert "load_vendored('b_common')" in out["b_common"] and "import" not in out["b_common"]
    assert rewrite_config({"a": 1}, "b_common") == {"a": 1}  # nothing to load when nothing uses it


def test_vendored_names_are_unique_identifiers():
    names = [vendored_name(b) for b in BUNDLE_NAMES]
    assert len(set(names)) == len(names) and all(n.isidentifier() and n != "common" for n in names)


def test_missing_bundle_and_checkpoint_are_clear_errors(tmp_path, capsys):
    with pytest.raises(InputError, match="not a bundle folder"):
        package_bundle(tmp_path, tmp_path / "out")
    with pytest.raises(InputError, match="nope.pt: checkpoint not found"):
        package_bundle("unetr_btcv", tmp_path / "out", ckpt=tmp_path / "nope.pt")
    assert main(["--bundle", "no_such_bundle", "--out", str(tmp_path / "o")]) == 1
    assert "not a bundle folder" in capsys.readouterr().err


OWN_NETWORK = {
    "transunet_btcv": "transunet",
    "swin_unet_btcv": "swin_unet",
    "mt_unet_btcv": "mt_unet",
    "unet_btcv": "nnunet_plan",
    "mednext_btcv": "mednext",
}


@pytest.mark.parametrize("bundle", FAMILIES)
def test_packaged_bundle_infers_without_the_project(bundle, tiny_data, tmp_path, monkeypatch):
    ckpt = random_checkpoint(bundle, tmp_path / "weights.pt")
    tiny = tmp_path / "tiny.json"  # the tiny network as an overlay, merged into the package (weights are checked)
    tiny.write_text(json.dumps(BUNDLE_TINY[bundle]), encoding="utf-8")
    paths = package_bundle(bundle, tmp_path / "dist", ckpt=ckpt, make_zip=True, configs=[tiny])
    folder = tmp_path / "dist" / bundle
    pkg = vendored_name(bundle)
    assert paths["folder"] == str(folder) and (folder / pkg / "__init__.py").is_file()
    assert (folder / "models" / "model.pt").read_bytes() == (tmp_path / "weights.pt").read_bytes()
    for cfg in (folder / "configs").glob("*.json"):
        text = cfg.read_text(encoding="utf-8")
        assert '"$import common"' not in text and "$common." not in text and '"common.' not in text, cfg
    with zipfile.ZipFile(paths["zip"]) as z:
        assert f"{bundle}/configs/inference.json" in z.namelist()
        assert f"{bundle}/{pkg}/bundle.py" in z.namelist()
    # only what the configs reach: no tool, no MONAI Label app, no other bundle's network (the SwinUNETR and MedNeXt
    # checkpoint converters ride along with the weight loader)
    vendored = sorted(p.relative_to(folder / pkg).as_posix() for p in (folder / pkg).rglob("*.py"))
    assert vendored == sorted(paths["vendored"]), (vendored, paths["vendored"])
    assert not [v for v in vendored if v.startswith(("tools/", "monailabel_app/"))], vendored
    nets = {v.split("/")[1][:-3] for v in vendored if v.startswith("networks/") and v != "networks/__init__.py"}
    two_d = bundle in ("transunet_btcv", "swin_unet_btcv", "mt_unet_btcv")  # they share networks/slice_input.py
    riders = {"swinunetr", "mednext"}  # the MONAI networks' checkpoint converters, named by the weight loader
    assert nets == ({OWN_NETWORK.get(bundle)} | riders) - {None} | ({"slice_input"} if two_d else set()), nets

    # a process where `import common` fails loudly, started in an unrelated directory
    decoy = tmp_path / "decoy"
    (decoy / "common").mkdir(parents=True)
    (decoy / "common" / "__init__.py").write_text(DECOY, encoding="utf-8")
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    out = tmp_path / "pred"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(folder / "configs" / "inference.json"),
        "--dataset_dir",
        str(image),
        "--output_dir",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(decoy)}
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    preds = sorted(out.rglob("*.nii.gz"))
    assert len(preds) == 1, preds
    src = nib.load(str(image))
    pred = nib.load(str(preds[0]))
    labels = np.asarray(pred.dataobj)
    assert pred.shape[:3] == src.shape and np.allclose(pred.affine, src.affine, atol=1e-4)
    assert set(np.unique(labels)) <= set(range(14)) and len(np.unique(labels)) > 1  # a comparison worth making

    # the same labels as the unpackaged bundle: same config, tiny overrides, checkpoint file and image
    ref_out = tmp_path / "pred-unpackaged"
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the workflow installs the project's hook
    wf = ConfigWorkflow(
        config_file=str(BUNDLES / bundle / "configs" / "inference.json"),
        logging_file=False,
        workflow_type="infer",
        dataset_dir=str(image),
        output_dir=str(ref_out),
        ckpt_path=ckpt,
        **BUNDLE_TINY[bundle],
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    refs = sorted(ref_out.rglob("*.nii.gz"))
    assert [p.name for p in refs] == [p.name for p in preds], refs
    ref = nib.load(str(refs[0]))
    assert np.array_equal(pred.affine, ref.affine), (pred.affine, ref.affine)
    ref_labels = np.asarray(ref.dataobj)
    assert labels.dtype == ref_labels.dtype and labels.shape == ref_labels.shape
    differ = int((labels != ref_labels).sum())
    assert differ == 0, f"packaged and unpackaged labels differ in {differ} of {labels.size} voxels"

    # the packaged train.json trains (one tiny epoch, validation included) with the vendored code alone
    train = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(folder / "configs" / "train.json"),
        "--dataset_dir",
        str(tiny_data),
        "--ckpt_dir",
        str(tmp_path / "trained"),
        "--output_dir",
        str(tmp_path / "runs"),
        "--max_epochs",
        "1",
        "--val_interval",
        "1",
    ]
    r = subprocess.run(train, cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "trained" / "model.pt").is_file()

    # the vendored copy, not the project, was loaded
    probe = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(folder)!r}); import {pkg}; print({pkg}.__file__)"],
        cwd=cwd,
        env=env,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == str(folder / pkg / "__init__.py"), (
        probe.stdout,
        probe.stderr,
    )


def test_package_cli_writes_the_bundle_its_checkpoint_and_zip(tmp_path, capsys):
    bundle = "unetr_btcv"
    ckpt = random_checkpoint(bundle, tmp_path / "elsewhere.pt")
    out = tmp_path / "dist"
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(BUNDLE_TINY[bundle]), encoding="utf-8")
    assert main(["--bundle", bundle, "--out", str(out), "--ckpt", ckpt, "--zip", "--config", str(tiny)]) == 0
    printed = capsys.readouterr().out
    folder, pkg = out / bundle, vendored_name(bundle)
    assert f"packaged {folder} (code vendored as {pkg})" in printed
    assert f"checkpoint: {folder / 'models' / 'model.pt'}" in printed and f"zip: {out / (bundle + '.zip')}" in printed
    assert (folder / "models" / "model.pt").read_bytes() == (tmp_path / "elsewhere.pt").read_bytes()
    assert (folder / pkg / "bundle.py").is_file() and (folder / "LICENSE").is_file()
    src_configs = sorted(p.name for p in (BUNDLES / bundle / "configs").iterdir() if p.is_file())
    assert sorted(p.name for p in (folder / "configs").iterdir()) == src_configs
    inference = json.loads((folder / "configs" / "inference.json").read_text(encoding="utf-8"))
    assert "$import common" not in inference["imports"] and pkg in inference
    assert inference["preprocessing"]["_target_"] == f"$@{pkg}.transforms.btcv_preprocessing"
    with zipfile.ZipFile(out / f"{bundle}.zip") as z:
        names = set(z.namelist())
    on_disk = {f"{bundle}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*") if p.is_file()}
    assert names == on_disk and f"{bundle}/models/model.pt" in names


def test_demo_checkpoint_is_checked_before_writing_and_packaged_with_its_overlay(tiny_data, tmp_path, capsys):
    """The reduced demo network's weights: without configs/demo.json nothing is written and the message names the
    overlay; with --config demo.json the packaged configs build the demo network (the weights load into it) and keep
    the package's own run locations."""
    from monai.bundle import ConfigParser

    from common.bundle import bundle_parser

    demo = BUNDLES / "unet_btcv" / "configs" / "demo.json"
    net = bundle_parser("unet_btcv", None, extra=[demo]).get_parsed_content("network_def")
    torch.save(net.state_dict(), tmp_path / "demo_model.pt")
    out = tmp_path / "dist"
    assert main(["--bundle", "unet_btcv", "--out", str(out), "--ckpt", str(tmp_path / "demo_model.pt")]) == 1
    err = capsys.readouterr().err
    assert "these weights are of the network that configs/demo.json builds" in err and not out.exists()
    assert (
        main(
            [
                "--bundle",
                "unet_btcv",
                "--out",
                str(out),
                "--ckpt",
                str(tmp_path / "demo_model.pt"),
                "--config",
                str(demo),
            ]
        )
        == 0
    )
    packaged = ConfigParser()
    packaged.read_config(str(out / "unet_btcv" / "configs" / "inference.json"))
    assert packaged["roi_size"] == [64, 64, 32] and packaged["spacing"] == [4.0, 4.0, 5.0]
    assert "demo" not in json.dumps(packaged["ckpt_path"]) and "demo" not in json.dumps(packaged["output_dir"])
    plain = ConfigParser()
    plain.read_config([str(BUNDLES / "unet_btcv" / "configs" / "inference.json"), str(demo)])
    plain["bundle_root"] = str(BUNDLES / "unet_btcv")
    want = rewrite_config(json.loads(json.dumps(plain.config)), vendored_name("unet_btcv"))["network_def"]
    assert packaged["network_def"] == want  # the demo network
    assert torch.equal(
        torch.load(out / "unet_btcv" / "models" / "model.pt", weights_only=True)["input_block.conv1.conv.weight"],
        net.state_dict()["input_block.conv1.conv.weight"],
    )
