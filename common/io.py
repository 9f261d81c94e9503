"""Reading and writing images: NIfTI through nibabel, DICOM series and other ITK formats through SimpleITK.

* :class:`NiftiReader` is MONAI's ``NibabelReader`` with a faster reordering of the voxels into C order (a
  NIfTI file stores them in Fortran order; MONAI copies every array into C order).
* :class:`SimpleITKReader` is a MONAI ``ImageReader`` so ``LoadImage(d)`` reads ``.mha``/``.mhd``/``.nrrd``
  files and DICOM series folders with the same RAS affine convention as MONAI's NIfTI reader (MONAI's
  own ``ITKReader`` needs the ``itk`` package, which this project does not depend on).
* :func:`image_info` reads only the header of an image (shape, channels, affine) and turns every failure
  into an :class:`~common.errors.InputError` naming the file.
* :class:`AtomicNibabelWriter` writes NIfTI to a temporary file in the target folder and renames it into
  place, so a crash or a concurrent reader never sees half a file; it hands nibabel the voxels already in the
  file's (Fortran) order and type.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.data import ImageReader, NibabelReader, NibabelWriter
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import orientation_ras_lps, to_affine_nd
from monai.transforms import LoadImage
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from monai.utils.type_conversion import convert_data_type, get_equivalent_dtype

from .errors import InputError
from .input_rules import geometry_rule

__all__ = [
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "NiftiReader",
    "SimpleITKReader",
    "register_readers",
    "AtomicNibabelWriter",
    "reorder",
    "ImageInfo",
    "image_info",
    "case_id",
    "is_image_path",
    "load_array",
    "atomic_path",
    "disk_full",
    "out_of_room",
    "disk_full_error",
    "file_sha256",
    "atomic_write_text",
    "atomic_write_bytes",
    "nifti_bytes",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")


def _lower_name(path: str | os.PathLike) -> str:
    return os.path.basename(str(path)).lower()


def dicom_series_ids(folder: str | os.PathLike) -> tuple[str, ...]:
    """The DICOM series in ``folder``, asked of ITK quietly: a folder without any is an answer, not a warning (ITK
    otherwise prints 'No Series were found' for every folder it is asked about)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _is_dicom_dir(path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and len(dicom_series_ids(path)) > 0


def case_id(path: str | os.PathLike) -> str:
    """Case name of an image or label path: the file (or folder) name without its image suffix."""
    name = os.path.basename(str(path).rstrip("/"))
    for suffix in (*NIFTI_SUFFIXES, *ITK_SUFFIXES, ".npy.h5", ".h5"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_image_path(path: str | os.PathLike) -> bool:
    """True for a file with a supported image suffix or a folder holding a DICOM series."""
    name = _lower_name(path)
    if name.endswith(NIFTI_SUFFIXES + ITK_SUFFIXES):
        return True
    return _is_dicom_dir(path)


def read_sitk(path: str) -> sitk.Image:
    """A file, or a folder of one DICOM series, read with SimpleITK; a folder with none or several is refused."""
    if os.path.isdir(path):
        series = dicom_series_ids(path)
        if not series:
            raise InputError(
                f"{path}: folder holds no DICOM series",
                "give an image file (NIfTI, .mha, .nrrd) or a folder holding the DICOM files of one series",
            )
        files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, uid) for uid in series}
        if len(series) > 1:
            raise InputError(
                f"{path}: folder holds {len(series)} DICOM series: "
                + ", ".join(f"SeriesInstanceUID {uid} ({len(files[uid])} files)" for uid in series),
                "move the files of each series into a folder of its own and give the folder of the series to read",
            )
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files[series[0]])
        img = reader.Execute()
    else:
        img = sitk.ReadImage(path)
    _sitk_geometry(img, path)
    return img


def reorder(array: np.ndarray, order: str = "C", dtype=None) -> np.ndarray:
    """``array`` (converted to ``dtype``) with its elements in C or Fortran memory order, same values and shape.

    NumPy's copy into another memory order walks one of the two arrays with large strides, where PyTorch's copy
    is blocked and multi-threaded. Conversion and reordering are one pass. Falls back to NumPy for
    what PyTorch cannot hold (non-native byte order, types it lacks, negative strides).
    """
    dtype = array.dtype if dtype is None else np.dtype(get_equivalent_dtype(dtype, np.ndarray))
    contiguous = array.flags.c_contiguous if order == "C" else array.flags.f_contiguous
    if contiguous and array.dtype == dtype:
        return array
    if array.dtype.isnative:
        out = np.empty(array.shape, dtype=dtype, order=order)
        try:
            torch.from_numpy(out).copy_(torch.from_numpy(array))
            return out
        except (TypeError, ValueError):  # a NumPy type PyTorch lacks, negative strides
            pass
    return np.asarray(array, dtype=dtype, order=order)


GEOMETRY_HINT = (
    "fix the voxel spacing in the file's header (NIfTI: pixdim and the sform or qform; DICOM, MHA, NRRD: the "
    "spacing), e.g. by converting the scan again from its DICOM series; nothing was run on it"
)


def _raw_nifti_header(path: str):
    """The NIfTI header of ``path`` as the file holds it: nibabel repairs a header it loads (a zero ``pixdim``
    becomes 1), and MONAI's reader rebuilds the sform from ``pixdim`` where they disagree."""
    with nib.openers.ImageOpener(path) as f:
        raw = f.read(540)
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            return klass.from_fileobj(io.BytesIO(raw), check=False)
        except Exception:  # noqa: BLE001 - not this version of the format
            continue
    return None


def _nifti_geometry(path: str, affine=None) -> None:
    """Refuse a NIfTI file whose header states no usable grid (:func:`common.input_rules.geometry_rule`): the matrix
    the header states (the sform where it is set, else the scaling by ``pixdim`` that the qform and the fallback
    use), then the affine nibabel made of it (``affine``)."""
    header = _raw_nifti_header(path)
    stated, where = None, "affine"
    if header is not None:
        if int(header["sform_code"]) > 0:
            stated, where = np.asarray(header.get_sform(), dtype=np.float64), "header's sform"
        else:
            stated, where = np.diag([*np.asarray(header["pixdim"][1:4], dtype=np.float64), 1.0]), "header's pixdim"
    problems = geometry_rule(path, stated, where) if stated is not None else []
    if not problems and affine is not None:
        problems = geometry_rule(path, np.asarray(affine, dtype=np.float64))
    if problems:
        raise InputError(problems, hint=GEOMETRY_HINT)


def _sitk_geometry(img, path: str) -> None:
    """Refuse an ITK image (DICOM series, MHA, NRRD) whose spacing or direction makes no usable grid."""
    problems = geometry_rule(path, _sitk_affine(img), "spacing and direction")
    if problems:
        raise InputError(problems, hint=GEOMETRY_HINT)


class NiftiReader(NibabelReader):
    """MONAI's ``NibabelReader``, returning the voxels in C order through :func:`reorder`, and refusing a header
    with no usable grid (:func:`_nifti_geometry`) before anything is computed on it.

    Same array, metadata and options; MONAI's ``LoadImage`` makes every array C-contiguous with NumPy, which
    for a NIfTI volume (stored x fastest) was half of the loading time of a BTCV-size CT.
    """

    def read(self, data, **kwargs):
        for name in ensure_tuple(data):
            _nifti_geometry(str(name))
        return super().read(data, **kwargs)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        array, meta = super().get_data(img)
        if isinstance(array, np.ndarray):
            array = reorder(array, "C")
        return array, meta


def register_readers(loader: LoadImage) -> LoadImage:
    """Give a MONAI ``LoadImage`` (or ``LoadImaged``) the project's readers, chosen by suffix: SimpleITK for ITK
    formats and DICOM folders, :class:`NiftiReader` for NIfTI. Returns the loader."""
    loader.register(SimpleITKReader())
    loader.register(NiftiReader())
    return loader


def _sitk_affine(img: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """RAS affine of a SimpleITK image or header (ITK geometry is LPS), as MONAI's ITKReader builds it."""
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    dim = len(spacing)
    sr = min(dim, 3)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:sr, :sr]
    spacing = spacing[:sr]
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)[:sr]
    affine = np.eye(sr + 1)
    affine[:sr, :sr] = direction @ np.diag(spacing)
    affine[:sr, -1] = origin
    return orientation_ras_lps(affine)


class SimpleITKReader(ImageReader):
    """MONAI image reader for DICOM series folders and ITK formats (``.mha``, ``.mhd``, ``.nrrd``, ``.dcm``).

    The returned array is indexed (x, y, z[, channel]) like NIfTI data and the affine is RAS, so the rest of
    the pipeline (``Orientationd``, ``Spacingd``, ``Invertd``) treats it exactly like a NIfTI image.
    """

    def __init__(self, channel_dim: str | int | None = None, **kwargs):
        super().__init__()
        self.channel_dim = float("nan") if channel_dim == "no_channel" else channel_dim
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        names = ensure_tuple(filename)
        # every folder, DICOM or not: read() then names the folder that holds no (or several) series
        return all(_lower_name(f).endswith(ITK_SUFFIXES) or os.path.isdir(f) for f in names)

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs):
        imgs = [read_sitk(str(Path(f).expanduser())) for f in ensure_tuple(data)]
        return imgs if len(imgs) > 1 else imgs[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays, meta = [], {}
        for i in img if isinstance(img, (list, tuple)) else [img]:  # sitk.Image is itself iterable
            dim = i.GetDimension()
            arr = sitk.GetArrayFromImage(i)  # (z, y, x[, c])
            ncomp = i.GetNumberOfComponentsPerPixel()
            spatial_axes = list(range(dim))[::-1]
            arr = np.transpose(arr, spatial_axes + ([dim] if ncomp > 1 else []))
            header = {
                MetaKeys.ORIGINAL_AFFINE: _sitk_affine(i),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.SPATIAL_SHAPE: np.asarray(i.GetSize()),
                "spacing": np.asarray(i.GetSpacing()),
            }
            header[MetaKeys.AFFINE] = header[MetaKeys.ORIGINAL_AFFINE].copy()
            if self.channel_dim is None:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if ncomp == 1 else -1
            else:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
            arrays.append(arr)
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image says: spatial shape, number of channels, RAS affine."""

    path: str
    spatial_shape: tuple[int, ...]
    channels: int
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def image_info(path: str | os.PathLike) -> ImageInfo:
    """Read an image header (no voxel data) and describe it; raise :class:`InputError` naming the file."""
    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found")
    name = _lower_name(path)
    try:
        if name.endswith(NIFTI_SUFFIXES):
            _nifti_geometry(path)  # the header as the file holds it, before nibabel repairs it on loading
            img = nib.load(path)
            _nifti_geometry(path, img.affine)
            shape = tuple(int(s) for s in img.shape)
            spatial = shape[:3]
            channels = int(np.prod(shape[3:])) if len(shape) > 3 else 1
            return ImageInfo(path, spatial, channels, np.asarray(img.affine, dtype=np.float64))
        if name.endswith(ITK_SUFFIXES):
            reader = sitk.ImageFileReader()
            reader.SetFileName(path)
            reader.ReadImageInformation()
            _sitk_geometry(reader, path)
            size = tuple(int(s) for s in reader.GetSize())
            channels = int(reader.GetNumberOfComponents()) * (int(np.prod(size[3:])) if len(size) > 3 else 1)
            return ImageInfo(path, size[:3], channels, _sitk_affine(reader))
        if os.path.isdir(path):
            img = read_sitk(path)
            return ImageInfo(path, tuple(img.GetSize()), img.GetNumberOfComponentsPerPixel(), _sitk_affine(img))
    except InputError:
        raise
    except Exception as e:  # nibabel / SimpleITK raise many different types for corrupt files
        raise InputError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e
    raise InputError(
        f"{path}: unsupported file type; expected NIfTI ({', '.join(NIFTI_SUFFIXES)}), "
        f"an ITK format ({', '.join(ITK_SUFFIXES)}) or a folder holding one DICOM series"
    )


_LOADER: LoadImage | None = None


def load_array(path: str | os.PathLike, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Load an image's voxels (x, y, z[, c]) and RAS affine with the project's readers.

    Raises :class:`InputError` naming the file when it is missing or cannot be read.
    """
    global _LOADER
    if _LOADER is None:
        _LOADER = register_readers(LoadImage(image_only=True))
    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found")
    try:
        img = _LOADER(path)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: cannot read the image ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    arr = np.asarray(img.array if hasattr(img, "array") else img)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr, np.asarray(img.affine, dtype=np.float64)


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file (qform and sform set to ``affine``, units mm) as bytes, deterministic for the
    same input (the gzip header carries no time stamp), for :func:`atomic_write_bytes`."""
    import gzip

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _default_file_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0o666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_sibling(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    try:
        os.fchmod(fd, _default_file_mode())  # mkstemp makes 0600; the renamed output must not stay private
    finally:
        os.close(fd)
    return Path(tmp)


def _full_suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".nii.gz", ".tar.gz"):
        if name.endswith(s):
            return path.name[-len(s) :]
    return path.suffix


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (checkpoint hashes in result files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is the disk (or the user's quota) running out of space:
    writers wrap the ``OSError`` in their own exceptions."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def out_of_room(exc: BaseException, folder: str | os.PathLike, need_bytes: int | None = None) -> bool:
    """Whether writing into ``folder`` failed for lack of space: :func:`disk_full`, or a writer that reports no
    ``errno`` (PyTorch's zip writer raises a bare ``RuntimeError``) while the disk has less room than the file needs
    (less than 1 MB where that is unknown)."""
    if isinstance(exc, InputError):
        return False
    if disk_full(exc):
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return False
    return free < max(int(need_bytes or 0), 2**20)


def _megabytes(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def disk_full_error(target: str | os.PathLike, need_bytes: int | None = None, bound: str = "up to") -> InputError:
    """The one message for an output that the disk had no room for: the folder, that its disk is full, what the
    output needs (``need_bytes``: ``bound`` says whether it is an upper bound or an estimate) and what is free."""
    target = Path(target)
    folder = target.parent
    try:
        free = f"{_megabytes(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    need = f"{target.name} needs {bound} {_megabytes(need_bytes)}" if need_bytes else f"{target.name} did not fit"
    return InputError(
        f"{folder}: the disk is full ({need}, {free})",
        hint="free space on that disk or write elsewhere (--output_dir for predictions and reports, --ckpt_dir for "
        "checkpoints, --out for exports and packages); nothing partial was left",
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, need_bytes: int | None = None, bound: str = "up to"):
    """The one way outputs are written: yields a temporary sibling of ``path`` (same folder, same extension, the
    usual file mode) to write to; when the block ends without an error it replaces ``path`` in one rename, else it
    is removed. A crash at any point leaves the old file or none, never half a file. A full disk is an
    :class:`InputError` (:func:`disk_full_error`; ``need_bytes``: what the writer knows the file needs, ``bound``
    "up to" or "about")."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(path, _full_suffix(path))
    except OSError as e:
        if disk_full(e):
            raise disk_full_error(path, need_bytes, bound) from e
        raise
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        if out_of_room(e, path.parent, need_bytes):
            raise disk_full_error(path, need_bytes, bound) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, see :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text (UTF-8) atomically, see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


class AtomicNibabelWriter(NibabelWriter):
    """MONAI ``NibabelWriter`` that writes to a temporary sibling file and renames it into place.

    The array reaches nibabel already in the output type and in Fortran order (:func:`reorder`), the order of
    the voxels in a NIfTI file: nibabel then writes it as it is, where it otherwise gathered every slice with
    NumPy (most of the time of writing a label map).
    """

    @classmethod
    def create_backend_obj(cls, data_array, affine=None, dtype=None, **kwargs):
        # as MONAI's NibabelWriter.create_backend_obj, whose array conversion would make the array C order again
        if isinstance(data_array, torch.Tensor):  # a MetaTensor too; any device; no copy on the CPU
            array = data_array.detach().cpu().as_subclass(torch.Tensor).numpy()
        else:
            array = np.asarray(data_array)
        affine = np.eye(4) if affine is None else convert_data_type(affine, np.ndarray)[0]
        return nib.nifti1.Nifti1Image(
            reorder(array, "F", dtype),
            to_affine_nd(r=3, affine=affine),
            header=kwargs.pop("header", None),
            extra=kwargs.pop("extra", None),
            file_map=kwargs.pop("file_map", None),
        )

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        data, dtype = getattr(self, "data_obj", None), getattr(self, "output_dtype", None)
        need = None
        if data is not None:  # uncompressed, in the output's type: gzip only shrinks it
            item = (
                np.dtype(dtype).itemsize
                if dtype is not None
                else np.dtype(get_equivalent_dtype(data.dtype, np.ndarray)).itemsize
            )
            need = 352 + int(np.prod(data.shape)) * item
        with atomic_path(filename, need) as tmp:
            super().write(str(tmp), verbose=verbose, **obj_kwargs)
