"""Shared fixtures: tiny generated data, tiny network overrides, the real sample CT (skipped when absent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SHARED = Path(os.environ.get("BTCV_SHARED", REPO.parent / "shared"))
SAMPLE_DIR = SHARED / "data" / "abdomen_ct_sample"
SCHEMA = SHARED / "monai" / "meta_schema_20240725.json"

# tiny phantoms: 4 cases (3 train / 1 validation) on a coarse grid, generated once per test session
TINY_SHAPE = (64, 64, 28)
TINY_SPACING = (6.0, 6.0, 10.0)

# a UNETR small enough for CI: same class and wiring as the research configuration, fewer features
TINY_UNETR = {
    "network_def#feature_size": 4,
    "network_def#hidden_size": 32,
    "network_def#mlp_dim": 64,
    "network_def#num_heads": 2,
}
TINY_3D_SETTINGS = {
    "spacing": [6.0, 6.0, 10.0],
    "roi_size": [32, 32, 16],
    "sw_batch_size": 2,
    "num_workers": 0,
}


# known HU values the preprocessing tests place in a volume, from air to bone, both window ends included
HU_PROBES = (-1000.0, -175.0, -125.0, 0.0, 100.0, 250.0, 275.0, 1000.0)


def probe_volume(folder: Path, spacing=(1.5, 1.5, 2.0)):
    """An LPS-stored CT at ``spacing``: air around a 0 HU body holding :data:`HU_PROBES` at known voxels, and a label.
    Returns the image and label paths, their arrays, the affine and the probes' voxel indices."""
    import nibabel as nib
    import numpy as np

    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = [30.0, -20.0, 5.0]
    img = np.full((40, 36, 14), -1000, np.int16)
    img[4:36, 4:32, 2:12] = 0
    probes = [(8 + 3 * n, 18, 7) for n in range(len(HU_PROBES))]
    for p, hu in zip(probes, HU_PROBES):
        img[p] = hu
    lab = np.zeros(img.shape, np.uint8)
    lab[10:20, 10:20, 4:8] = 6
    paths = []
    for name, arr in (("probe_img.nii.gz", img), ("probe_lab.nii.gz", lab)):
        nib.save(nib.Nifti1Image(arr, aff), str(folder / name))
        paths.append(str(folder / name))
    return *paths, img, lab, aff, probes


@pytest.fixture
def bf16_cpu(monkeypatch):
    """For tests of the reduced-precision switches themselves: this CPU counts as one with bf16 and fp16
    instructions, whatever it has (without them the switches run fp32, which the tests of that fallback check by
    patching the other way). Tiny networks only: where the instructions are missing, bf16 is emulated, slowly."""
    import common.inference

    monkeypatch.setattr(common.inference, "cpu_reduced_precision", lambda: {"bf16": True, "fp16": True})


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep generated demo data out of the user's cache during tests."""
    old = os.environ.get("BTCV_DEMO_DIR")
    os.environ["BTCV_DEMO_DIR"] = str(tmp_path_factory.mktemp("demo-cache"))
    yield
    if old is None:
        os.environ.pop("BTCV_DEMO_DIR", None)
    else:
        os.environ["BTCV_DEMO_DIR"] = old


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Folder with 4 tiny phantoms and ``dataset.json`` (3 training, 1 validation)."""
    from common.phantom import write_phantom_dataset

    out = tmp_path_factory.mktemp("tiny-phantoms")
    write_phantom_dataset(out, num_cases=4, num_validation=1, seed=7, shape=TINY_SHAPE, spacing=TINY_SPACING)
    return out


def _shared_file_or_skip(path: Path, what: str) -> Path:
    """``path`` if it exists; otherwise skip with the reason, or fail where ``BTCV_REQUIRE_SHARED`` is set (CI,
    which always has ../shared beside the clone: a missing file there is an error, not a skip)."""
    if path.exists():
        return path
    message = f"{what} not found at {path} (set BTCV_SHARED to the shared folder)"
    if os.environ.get("BTCV_REQUIRE_SHARED"):
        pytest.fail(f"{message}; BTCV_REQUIRE_SHARED is set", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sample_ct() -> Path:
    """The real abdominal CT sample of ../shared/data (skips with the reason when it is absent)."""
    _shared_file_or_skip(SAMPLE_DIR / "image.nii.gz", "real CT sample")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def schema_file() -> Path:
    return _shared_file_or_skip(SCHEMA, "metadata schema")


def _monailabel_available() -> bool:
    try:
        import monailabel.tasks.infer.bundle  # noqa: F401
    except ImportError:
        return False
    return True


# MONAI Label lives in its own environment (`make test-monailabel`); there a missing install is an error.
collect_ignore = []
if not _monailabel_available():
    if os.environ.get("BTCV_REQUIRE_MONAILABEL"):
        raise RuntimeError(
            "BTCV_REQUIRE_MONAILABEL is set but monailabel is not importable: run `make test-monailabel`"
        )
    collect_ignore.append("monailabel_env")


def pytest_configure(config):
    sys.path.insert(0, str(REPO))
