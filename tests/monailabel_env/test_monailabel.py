"""MONAI Label 0.8.5 with the real ``BundleTrainTask``/``BundleInferTask`` and the app's HTTP server.

These tests need MONAI Label (and so torchvision and the CUDA build of torch): they run in their own
environment with ``make test-monailabel`` (``.ci/run`` does), and are not collected in the default run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_cases import BUNDLE_NAMES, BUNDLE_TINY
from conftest import BUNDLES, REPO, TINY_SHAPE, TINY_SPACING
from monai.bundle import ConfigParser
from monailabel.datastore.local import LocalDatastore
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

from common.labels import BTCV_ORGANS

APP = REPO / "common" / "monailabel_app"
ORGAN_NAMES = {o.name.lower() for o in BTCV_ORGANS}


def tiny_bundle(bundle: str, dest: Path) -> Path:
    """A copy of ``bundles/<bundle>`` with the tiny test network and settings written into its configs."""
    out = dest / bundle
    shutil.copytree(BUNDLES / bundle / "configs", out / "configs")
    settings = {**BUNDLE_TINY[bundle], "val_interval": 1, "cache_rate": 0.0}
    for name in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(str(out / "configs" / name))
        for k, v in settings.items():
            if k.split("#")[0] in parser.config:
                parser[k] = v
        ConfigParser.export_config_file(parser.config, str(out / "configs" / name), indent=2)
    return out


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """A MONAI Label local datastore: 4 phantom CTs, their labels under ``labels/final``."""
    from common.phantom import write_phantom_dataset

    src = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(src, num_cases=4, num_validation=1, seed=3, shape=TINY_SHAPE, spacing=TINY_SPACING)
    out = tmp_path_factory.mktemp("studies")
    (out / "labels" / "final").mkdir(parents=True)
    dl = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    for item in dl["training"] + dl["validation"]:
        name = Path(item["image"]).name
        shutil.copy2(src / item["image"], out / name)
        shutil.copy2(src / item["label"], out / "labels" / "final" / name)
    return out


def check_label_volume(pred_path, image_path) -> set[int]:
    image, pred = nib.load(str(image_path)), nib.load(str(pred_path))
    assert pred.shape[:3] == image.shape, (pred.shape, image.shape)
    assert np.allclose(pred.affine, image.affine, atol=1e-3), (pred.affine, image.affine)
    values = {int(v) for v in np.unique(np.asarray(pred.dataobj))}
    assert values <= set(range(14)), values
    return values


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_bundle_train_then_infer_tasks(bundle, studies, tmp_path):
    path = tiny_bundle(bundle, tmp_path / "model")
    # without a checkpoint MONAI Label does not serve the bundle
    assert not BundleInferTask(str(path), {}).is_valid()

    trainer = BundleTrainTask(str(path), {})
    assert trainer.is_valid()
    datastore = LocalDatastore(str(studies), extensions=("*.nii.gz",), auto_reload=False)
    assert len(datastore.datalist()) == 4
    request = {"model": bundle, "max_epochs": 1, "val_split": 0.25, "multi_gpu": False, "device": "cpu"}
    # ("pretrained": False crashes MONAI Label 0.8.5: os.path.exists(None); with no model.pt nothing is loaded)
    trainer(request, datastore)
    assert (path / "models" / "model.pt").is_file(), sorted(p.name for p in (path / "models").glob("*"))

    task = BundleInferTask(str(path), {})
    assert task.is_valid()
    assert task.dimension == 3, "every bundle, the 2D ones included, is a 3D-volume model to MONAI Label"
    assert set(task.labels) == ORGAN_NAMES and sorted(task.labels.values()) == list(range(1, 14))
    image = sorted(studies.glob("*.nii.gz"))[0]
    label_file, result = task({"image": str(image), "device": "cpu"})
    try:
        check_label_volume(label_file, image)
    finally:
        if label_file and os.path.exists(label_file):
            os.remove(label_file)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_server_serves_inference_over_http(studies, tmp_path):
    bundles_dir = tmp_path / "bundles"
    path = tiny_bundle("unetr_btcv", bundles_dir)
    tiny_bundle("transunet_btcv", bundles_dir)  # no checkpoint: listed for training, not served for inference
    from test_geometry import random_checkpoint  # noqa: E402  (tests/ is on sys.path through conftest)

    (path / "models").mkdir()
    random_checkpoint("unetr_btcv", path / "models" / "model.pt")
    first = sorted(studies.glob("*.nii.gz"))[0]
    src = nib.load(str(first))
    vol = np.asarray(src.dataobj).astype(np.float32)
    vol[5:7, 5:7, 3] = np.nan  # a CT with 4 NaN voxels, refused with a clear message
    nib.save(nib.Nifti1Image(vol, src.affine), str(studies / "with_nan.nii.gz"))
    from test_bad_input import edit_nifti_header  # noqa: E402

    nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[..., :4], src.affine), str(studies / "zero_spacing.nii.gz"))
    edit_nifti_header(studies / "zero_spacing.nii.gz", pixdim3=0.0, sform_code=0)  # no slice spacing, no sform
    port = _free_port()
    app = tmp_path / "app"  # MONAI Label writes its logs into the app folder: a copy keeps the source tree clean
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("logs", "__pycache__"))
    cmd = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(app),
        "--studies",
        str(studies),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--conf",
        "models",
        "unetr_btcv,transunet_btcv",
        "--conf",
        "zoo_source",
        "local",
        "--conf",
        "bundles_dir",
        str(bundles_dir),
    ]
    log = open(tmp_path / "server.log", "w", encoding="utf-8")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        info = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/info/", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        assert info is not None, (tmp_path / "server.log").read_text(encoding="utf-8")[-4000:]
        assert set(info["models"]) == {"unetr_btcv"} and set(info["trainers"]) == {"unetr_btcv", "transunet_btcv"}
        assert info["models"]["unetr_btcv"]["dimension"] == 3

        image_id = sorted(studies.glob("*.nii.gz"))[0].name[: -len(".nii.gz")]
        boundary = "btcvboundary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{"device": "cpu"}}\r\n--{boundary}--\r\n'
        ).encode()
        req = urllib.request.Request(
            f"{base}/infer/unetr_btcv?image={image_id}&output=image",
            data=body,
            method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(req, timeout=300) as r:
            assert r.status == 200
            payload = r.read()
        out = tmp_path / "label.nii.gz"
        out.write_bytes(payload)
        check_label_volume(out, studies / f"{image_id}.nii.gz")

        # a bad input is a clear HTTP error (the file, the problem, the fix), and the server goes on serving
        def refused_detail(image: str) -> str:
            """The detail of the 422 answer to an infer request on ``image``."""
            bad = urllib.request.Request(
                f"{base}/infer/unetr_btcv?image={image}&output=image",
                data=body,
                method="POST",
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(bad, timeout=300)
            assert refused.value.code == 422
            return json.loads(refused.value.read())["detail"]

        detail = refused_detail("with_nan")
        assert "with_nan.nii.gz: 4 voxel(s) are NaN or infinite" in detail and "Traceback" not in detail, detail
        detail = refused_detail("zero_spacing")
        assert "zero_spacing.nii.gz" in detail and "axis 2 (z, the slices) has voxel spacing 0" in detail, detail
        with urllib.request.urlopen(req, timeout=300) as r:
            assert r.status == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert server.returncode is not None


def test_app_names_missing_bundles(tmp_path):
    sys.path.insert(0, str(APP))
    try:
        from main import resolve_bundles
    finally:
        sys.path.remove(str(APP))
    with pytest.raises(ValueError, match="no_such_bundle.*never downloads"):
        resolve_bundles(tmp_path, {"models": "no_such_bundle"})
    with pytest.raises(ValueError, match="no bundle selected"):
        resolve_bundles(tmp_path, {})
    assert set(resolve_bundles(tmp_path, {"models": "all"})) == set(BUNDLE_NAMES)


def test_app_training_on_a_bad_study_is_one_clear_error(studies, tmp_path):
    """The app's train() with a NaN CT among the studies: MONAI Label's INVALID_INPUT carrying the one clear message."""
    from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

    sys.path.insert(0, str(APP))
    try:
        from main import BTCVBundlesApp
    finally:
        sys.path.remove(str(APP))
    bad_studies = tmp_path / "studies"
    shutil.copytree(studies, bad_studies, ignore=shutil.ignore_patterns("with_nan.nii.gz", "zero_spacing.nii.gz"))
    first = sorted(bad_studies.glob("*.nii.gz"))[0]
    src = nib.load(str(first))
    vol = np.asarray(src.dataobj).astype(np.float32)
    vol[5:7, 5:7, 3] = np.nan
    nib.save(nib.Nifti1Image(vol, src.affine), str(first))  # a labelled study with 4 NaN voxels
    bundles_dir = tmp_path / "bundles"
    tiny_bundle("unetr_btcv", bundles_dir)
    app = shutil.copytree(APP, tmp_path / "app", ignore=shutil.ignore_patterns("logs", "__pycache__"))
    instance = BTCVBundlesApp(str(app), str(bad_studies), {"models": "unetr_btcv", "bundles_dir": str(bundles_dir)})
    with pytest.raises(MONAILabelException) as refused:
        instance.train({"model": "unetr_btcv", "max_epochs": 1, "val_split": 0.25, "multi_gpu": False, "device": "cpu"})
    assert refused.value.error == MONAILabelError.INVALID_INPUT
    assert f"{first.name}: 4 voxel(s) are NaN or infinite" in refused.value.msg and "Traceback" not in refused.value.msg


def test_app_refuses_to_serve_weights_of_another_network(studies, tmp_path, caplog):
    """A bundle whose model.pt holds another network (here the tiny test network under the full-size configs) is
    not served, with one log message saying why, instead of failing at the first request."""
    import logging

    sys.path.insert(0, str(APP))
    try:
        from main import BTCVBundlesApp
    finally:
        sys.path.remove(str(APP))
    from test_geometry import random_checkpoint  # noqa: E402  (tests/ is on sys.path through conftest)

    bundles_dir = tmp_path / "bundles"
    path = bundles_dir / "unetr_btcv"
    shutil.copytree(BUNDLES / "unetr_btcv" / "configs", path / "configs")  # full-size configs
    (path / "models").mkdir()
    random_checkpoint("unetr_btcv", path / "models" / "model.pt")  # tiny weights
    app = shutil.copytree(APP, tmp_path / "app", ignore=shutil.ignore_patterns("logs", "__pycache__"))
    with caplog.at_level(logging.ERROR):
        instance = BTCVBundlesApp(str(app), str(studies), {"models": "unetr_btcv", "bundles_dir": str(bundles_dir)})
    assert "unetr_btcv" not in instance.info()["models"]
    lines = [r.getMessage() for r in caplog.records if "not served for inference" in r.getMessage()]
    assert len(lines) == 1 and "do not fit this UNETR configuration" in lines[0], lines
