"""Readers: NIfTI through nibabel, DICOM series / .mha / .nrrd through SimpleITK, same array and RAS affine;
atomic writers that leave the old file or nothing, never half a file."""

from __future__ import annotations

import errno
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from common.errors import InputError
from common.io import (
    AtomicNibabelWriter,
    NiftiReader,
    atomic_write_bytes,
    atomic_write_text,
    image_info,
    load_array,
    nifti_bytes,
    reorder,
)
from common.phantom import make_phantom


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A small phantom as NIfTI in LPS-like storage (negative x/y axes), plus its array and affine."""
    ph = make_phantom(seed=5, shape=(48, 40, 12), spacing=(7.0, 7.5, 12.0))
    d = tmp_path_factory.mktemp("io")
    path = d / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ph.image, ph.affine), str(path))
    return path, ph.image, ph.affine


SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.12345"


def _write_dicom_series(img: sitk.Image, folder, series_uid: str = SERIES_UID, prefix: str = "slice") -> list[Path]:
    """Write ``img`` as one 2D DICOM file per slice (``<prefix><index>.dcm``, index = instance number = slice index
    of ``img``); return the files in that order."""
    os.makedirs(folder, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    series_tags = {
        "0008|0060": "CT",
        "0020|000e": series_uid,
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.54321",
        "0020|0037": "\\".join(
            map(str, (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))
        ),
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
        writer.SetFileName(os.path.join(folder, f"{prefix}{i:03d}.dcm"))
        writer.Execute(s)
    return [Path(folder) / f"{prefix}{i:03d}.dcm" for i in range(img.GetDepth())]


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


OTHER_SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.67890"


def _small_nifti(folder: Path, affine: np.ndarray) -> tuple[Path, np.ndarray]:
    """A 16 x 16 x 6 int16 NIfTI whose voxels all differ, so a swapped or mirrored slice changes the array."""
    arr = (np.arange(16 * 16 * 6).reshape(16, 16, 6) - 700).astype(np.int16)
    path = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path, arr


def _assert_same_values_at_same_positions(
    got: np.ndarray, got_aff: np.ndarray, ref: np.ndarray, ref_aff: np.ndarray
) -> None:
    """Every voxel centre of ``got`` (through its RAS affine) is a voxel centre of ``ref`` holding the same value."""
    assert got.shape == ref.shape
    ijk = np.indices(got.shape).reshape(3, -1)
    world = got_aff[:3, :3] @ ijk + got_aff[:3, 3:]
    ref_ijk = np.linalg.solve(ref_aff[:3, :3], world - ref_aff[:3, 3:])
    idx = np.rint(ref_ijk).astype(int)
    np.testing.assert_allclose(ref_ijk, idx, atol=1e-3, err_msg="voxel centres do not fall on the source grid")
    outside = ~((idx >= 0) & (idx < np.array(ref.shape)[:, None])).all(axis=0)
    assert not outside.any(), (
        f"{outside.sum()} of {outside.size} voxels lie outside the source volume "
        f"(source indices {idx.min(axis=1)}..{idx.max(axis=1)}, shape {ref.shape})"
    )
    np.testing.assert_array_equal(got[tuple(ijk)], ref[tuple(idx)], err_msg="values differ at the same position")


def _bundle_loader(path: Path) -> dict:
    """Load ``path`` as the bundles do (``load_transforms``' ``LoadCheckedImaged`` with the project's readers)."""
    from common.transforms import load_transforms

    return load_transforms(keys=("image",))[0]({"image": str(path)})


def test_dicom_series_is_read_in_slice_order_whatever_the_file_names(tmp_path):
    """Files renamed so that name order is neither the slice order nor its reverse: the folder still reads as the
    NIfTI it was written from (same array, same affine), i.e. slices are ordered by position, not by name."""
    affine = np.array([[-0.7, 0, 0, 10.0], [0, -0.8, 0, -20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    src, arr = _small_nifti(tmp_path, affine)
    files = _write_dicom_series(sitk.ReadImage(str(src)), tmp_path / "series")
    names = ["IM03", "IM00", "IM05", "IM01", "IM04", "IM02"]  # slice i -> names[i]; no suffix, as scanners write
    by_name = [names.index(n) for n in sorted(names)]  # slices in name order
    assert by_name not in (sorted(by_name), sorted(by_name, reverse=True))
    for i, f in enumerate(files):
        f.rename(f.with_name(f"tmp{i}"))
    for i, f in enumerate(files):
        f.with_name(f"tmp{i}").rename(f.with_name(names[i]))
    got, got_aff = load_array(tmp_path / "series")
    ref, ref_aff = load_array(src)
    np.testing.assert_array_equal(ref, arr)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(got_aff, ref_aff, atol=1e-3)
    info = image_info(tmp_path / "series")
    assert info.spatial_shape == arr.shape
    np.testing.assert_allclose(info.affine, ref_aff, atol=1e-3)


@pytest.mark.parametrize(
    "steps",
    [
        # the storage z axis points to the feet (a left-handed grid): the DICOM normal (row x column) points to the
        # head, so positions along it decrease with file name and instance number
        pytest.param((-0.7, -0.8, -2.5), id="slices-head-to-feet"),
        # y and z flipped (a rotation): the DICOM normal points to the feet, positions increase along it
        pytest.param((-0.7, 0.8, -2.5), id="feet-first-normal"),
    ],
)
def test_dicom_series_with_reversed_slice_direction_keeps_patient_positions(tmp_path, steps):
    """A series whose slices run from head to feet: whatever storage order the reader picks, the voxel at each
    patient position holds the value the NIfTI source has there, in the affine of both ``load_array`` and
    ``image_info``."""
    affine = np.diag([*steps, 1.0])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    src, arr = _small_nifti(tmp_path, affine)
    _write_dicom_series(sitk.ReadImage(str(src)), tmp_path / "series")
    got, got_aff = load_array(tmp_path / "series")
    ref, ref_aff = load_array(src)
    np.testing.assert_allclose(ref_aff, affine, atol=1e-6)
    _assert_same_values_at_same_positions(got, got_aff, ref, ref_aff)
    info = image_info(tmp_path / "series")
    np.testing.assert_allclose(info.affine, got_aff, atol=1e-3)


def test_folder_with_two_dicom_series_is_refused_naming_each(tmp_path):
    """Two series (two SeriesInstanceUIDs) in one folder: one InputError naming the folder, each series' UID and
    number of files, and the fix (one folder per series), from ``load_array``, ``image_info`` and the bundles'
    loader; never one of the series read silently."""
    src, _ = _small_nifti(tmp_path, np.diag([-0.7, -0.8, 2.5, 1.0]))
    img = sitk.ReadImage(str(src))
    folder = tmp_path / "study"
    _write_dicom_series(img, folder, prefix="ct")
    _write_dicom_series(img[:, :, :4], folder, series_uid=OTHER_SERIES_UID, prefix="scout")
    for read in (load_array, image_info, _bundle_loader):
        with pytest.raises(InputError) as e:
            read(folder)
        msg = str(e.value)
        assert msg.startswith(f"{folder}: folder holds 2 DICOM series"), (read, msg)
        assert f"{SERIES_UID} (6 files)" in msg and f"{OTHER_SERIES_UID} (4 files)" in msg, (read, msg)
        assert "folder of its own" in msg, (read, msg)
        assert msg.count(str(folder)) == 1, (read, msg)  # one message, not wrapped in a second one


@pytest.mark.parametrize("content", ["empty", "text-file"])
def test_folder_without_dicom_series_is_refused_naming_it(tmp_path, content):
    """A folder with no DICOM file: one InputError naming the folder and saying it holds no DICOM series, from
    ``load_array``, ``image_info`` and the bundles' loader (not MONAI's 'cannot find a suitable reader')."""
    folder = tmp_path / "scans"
    folder.mkdir()
    if content == "text-file":
        (folder / "README.txt").write_text("not an image\n", encoding="utf-8")
    for read in (load_array, image_info, _bundle_loader):
        with pytest.raises(InputError) as e:
            read(folder)
        msg = str(e.value)
        assert msg.startswith(f"{folder}: folder holds no DICOM series"), (read, msg)
        assert msg.count(str(folder)) == 1, (read, msg)


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
    """Success path: the text and NIfTI writers create missing folders and leave only the target file (failures
    are injected in the ``failing_midway`` tests)."""
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


def _fail_midway(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Make the next write fail as a full disk does: at ``"write"``, after half of the bytes reached the file
    (``Path.write_bytes`` for the byte/text writers, ``nibabel.save`` for the NIfTI writer); at ``"rename"``,
    when the finished file would be moved into place (``os.replace``)."""
    if where == "write":
        real_save = nib.save

        def write_bytes(self: Path, data) -> int:
            data = bytes(data)
            with open(self, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "injected: no space left on device", str(self))

        def save(img, filename, *args, **kwargs) -> None:
            real_save(img, filename, *args, **kwargs)
            os.truncate(filename, os.path.getsize(filename) // 2)
            raise OSError(errno.ENOSPC, "injected: no space left on device", str(filename))

        monkeypatch.setattr(Path, "write_bytes", write_bytes)
        monkeypatch.setattr(nib, "save", save)
    else:

        def replace(src, dst, *args, **kwargs) -> None:
            raise OSError(errno.EIO, "injected: rename failed", str(src))

        monkeypatch.setattr(os, "replace", replace)


def _expected_error(where: str) -> dict:
    """What :func:`_fail_midway` makes the writer raise: a full disk is the one disk-full message (an
    :class:`InputError` naming the folder), any other failure propagates as it was."""
    if where == "write":
        return {"expected_exception": InputError, "match": "the disk is full"}
    return {"expected_exception": OSError, "match": "injected: rename failed"}


def _assert_old_file_or_none(target: Path, old: bytes | None) -> None:
    """The folder of ``target`` holds ``target`` with exactly ``old`` (or nothing when ``old`` is None), and no
    temporary or partial file."""
    left = sorted(p.name for p in target.parent.iterdir()) if target.parent.exists() else []
    assert left == ([target.name] if old is not None else []), left
    if old is not None:
        assert target.read_bytes() == old


@pytest.mark.parametrize("where", ["write", "rename"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize("kind", ["text", "bytes"])
def test_atomic_write_failing_midway_leaves_old_file_or_none(tmp_path, monkeypatch, kind, existing, where):
    """``atomic_write_text`` / ``atomic_write_bytes`` failing while writing or renaming: the error propagates, a new
    target does not appear, an existing one keeps its old bytes, and no temporary file is left in the folder."""
    target = tmp_path / "out" / ("summary.csv" if kind == "text" else "case1.nii.gz")
    old = None
    if existing:
        old = b"old,content\n" if kind == "text" else nifti_bytes(np.zeros((4, 4, 4), np.uint8), np.eye(4))
        target.parent.mkdir()
        target.write_bytes(old)
    _fail_midway(monkeypatch, where)
    with pytest.raises(**_expected_error(where)):
        if kind == "text":
            atomic_write_text(target, "organ,dice\n" + "spleen,0.95\n" * 500)
        else:
            atomic_write_bytes(target, nifti_bytes(np.ones((8, 8, 8), np.uint8), np.eye(4)))
    monkeypatch.undo()
    _assert_old_file_or_none(target, old)


@pytest.mark.parametrize("where", ["write", "rename"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_atomic_nibabel_writer_failing_midway_leaves_old_file_or_none(tmp_path, monkeypatch, existing, where):
    """The bundles' SaveImaged writer failing while nibabel writes or while renaming: the error propagates, a new
    prediction does not appear, an existing one keeps its old bytes, and no temporary file is left."""
    target = tmp_path / "pred" / "case1_seg.nii.gz"
    old = None
    if existing:
        old = nifti_bytes(np.zeros((4, 4, 4), np.uint8), np.eye(4))
        target.parent.mkdir()
        target.write_bytes(old)
    w = AtomicNibabelWriter(output_dtype=np.uint8)
    w.set_data_array(np.full((1, 8, 8, 8), 3, np.uint8), channel_dim=0)
    w.set_metadata({"affine": np.diag([2.0, 2.0, 3.0, 1.0])}, resample=False)
    _fail_midway(monkeypatch, where)
    with pytest.raises(**_expected_error(where)):
        w.write(str(target))
    monkeypatch.undo()
    _assert_old_file_or_none(target, old)


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
    for w, given in (
        (NibabelWriter(output_dtype=np.uint8), data),
        (AtomicNibabelWriter(output_dtype=np.uint8), MetaTensor(data)),
    ):
        w.set_data_array(given, channel_dim=0)
        w.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
        files.append(tmp_path / f"{type(w).__name__}.nii.gz")
        w.write(str(files[-1]))
    raw = [gzip.decompress(f.read_bytes()) for f in files]
    assert raw[0] == raw[1]
    np.testing.assert_array_equal(np.asarray(nib.load(str(files[1])).dataobj), data[0].astype(np.uint8))
