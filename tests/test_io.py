"""Readers: NIfTI through nibabel, DICOM series / .mha / .nrrd through SimpleITK, same array and RAS affine."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from common.errors import InputError
from common.io import AtomicNibabelWriter, NiftiReader, atomic_write_text, image_info, load_array, reorder
from common.phantom import make_phantom


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A small phantom as NIfTI in LPS-like storage (negative x/y axes), plus its array and affine."""
    ph = make_phantom(seed=5, shape=(48, 40, 12), spacing=(7.0, 7.5, 12.0))
    d = tmp_path_factory.mktemp("io")
    path = d / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ph.image, ph.affine), str(path))
    return path, ph.image, ph.affine


def _write_dicom_series(img: sitk.Image, folder):
    os.makedirs(folder, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    series_tags = {
        "0008|0060": "CT",
        "0020|000e": "1.2.826.0.1.3680043.2.1125.1.12345",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.54321",
        "0020|0037": "\\".join(map(str, (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))),
        "0028|1050": "40",
        "0028|1051": "400",
    }
    for i in range(img.GetDepth()):
        s = img[:, :, i]
        for k, v in series_tags.items():
            s.SetMetaData(k, v)
        s.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, i)))))
        s.SetMetaData("0020|0013", str(i))
        s.SetMetaData("0018|0050", str(img.GetSpacing()[2]))
        writer.SetFileName(os.path.join(folder, f"slice{i:03d}.dcm"))
        writer.Execute(s)


@pytest.mark.parametrize("fmt", [".mha", ".nrrd", "dicom"])
def test_itk_formats_read_like_nifti(volume, tmp_path, fmt):
    path, arr, affine = volume
    img = sitk.ReadImage(str(path))
    if fmt == "dicom":
        target = tmp_path / "series"
        _write_dicom_series(img, target)
    else:
        target = tmp_path / f"ct{fmt}"
        sitk.WriteImage(img, str(target))
    got, got_aff = load_array(target)
    ref, ref_aff = load_array(path)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(got_aff, ref_aff, atol=1e-3)
    np.testing.assert_array_equal(ref, arr)
    info = image_info(target)
    assert info.spatial_shape == arr.shape and info.channels == 1
    np.testing.assert_allclose(info.affine, affine, atol=1e-3)


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.nii\.gz: file not found"):
        image_info(tmp_path / "nope.nii.gz")
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(InputError, match=r"broken\.nii\.gz: cannot read the image"):
        image_info(bad)
    with pytest.raises(InputError, match=r"broken\.nii\.gz: cannot read the image"):
        load_array(bad)
    txt = tmp_path / "notes.txt"
    txt.write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="unsupported file type"):
        image_info(txt)


def test_multichannel_header_reports_channels(tmp_path):
    p = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.int16), np.eye(4)), str(p))
    info = image_info(p)
    assert info.spatial_shape == (8, 8, 4) and info.channels == 3


def test_atomic_writers_leave_no_partial_files(tmp_path):
    atomic_write_text(tmp_path / "a" / "x.csv", "1,2\n")
    assert (tmp_path / "a" / "x.csv").read_text(encoding="utf-8") == "1,2\n"
    w = AtomicNibabelWriter()
    w.set_data_array(np.ones((1, 4, 4, 4), np.uint8), channel_dim=0)
    w.set_metadata({"affine": np.diag([2.0, 2.0, 3.0, 1.0])})
    w.write(str(tmp_path / "b" / "seg.nii.gz"))
    assert nib.load(str(tmp_path / "b" / "seg.nii.gz")).shape == (4, 4, 4)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["seg.nii.gz"]


def test_atomic_outputs_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        out = atomic_write_text(tmp_path / "r.csv", "x\n")
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
    finally:
        os.umask(mask)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8, ">i2", np.uint16, np.bool_])
@pytest.mark.parametrize("order", ["C", "F"])
def test_reorder_keeps_values_and_shape(dtype, order):
    """The PyTorch reordering gives NumPy's array, in the asked memory order and type (NumPy for what
    PyTorch cannot hold: big-endian data, negative strides)."""
    a = np.asfortranarray((np.arange(5 * 6 * 7).reshape(5, 6, 7) % 97).astype(dtype))
    for src in (a, np.ascontiguousarray(a), a[:, ::2], a[::-1]):
        for out_dtype in (None, np.uint8, np.float32):
            got = reorder(src, order, out_dtype)
            want = np.asarray(src, dtype=out_dtype or src.dtype)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.flags.c_contiguous if order == "C" else got.flags.f_contiguous
            np.testing.assert_array_equal(got, want)


def test_nifti_reader_gives_monais_array(volume):
    """The project's NIfTI reader returns exactly the array and metadata of MONAI's, in C order."""
    from monai.data import NibabelReader

    path = volume[0]
    ours, theirs = NiftiReader(), NibabelReader()
    a, meta_a = ours.get_data(ours.read(str(path)))
    b, meta_b = theirs.get_data(theirs.read(str(path)))
    assert a.flags.c_contiguous and not b.flags.c_contiguous  # MONAI's comes in the file's Fortran order
    np.testing.assert_array_equal(a, b)
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(meta_a["affine"], meta_b["affine"])


def test_atomic_writer_writes_what_monais_writer_writes(tmp_path):
    """Handing nibabel the voxels in Fortran order changes nothing in the file (decompressed bytes equal)."""
    from monai.data import MetaTensor, NibabelWriter

    rng = np.random.default_rng(0)
    data = rng.integers(0, 14, (1, 9, 7, 5)).astype(np.float32)
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.8, 0, -3], [0, 0, 2.5, 7], [0, 0, 0, 1]])
    files = []
    for w, given in ((NibabelWriter(output_dtype=np.uint8), data), (AtomicNibabelWriter(output_dtype=np.uint8), MetaTensor(data))):
        w.set_data_array(given, channel_dim=0)
        w.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
        files.append(tmp_path / f"{type(w).__name__}.nii.gz")
        w.write(str(files[-1]))
    raw = [gzip.decompress(f.read_bytes()) for f in files]
    assert raw[0] == raw[1]
    np.testing.assert_array_equal(np.asarray(nib.load(str(files[1])).dataobj), data[0].astype(np.uint8))
