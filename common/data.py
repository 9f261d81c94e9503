"""Datalists: BTCV splits, checking every file before training, the embedded demo data, finding images.

A datalist is MONAI's decathlon-style JSON: ``{"training": [{"image": ..., "label": ...}, ...],
"validation": [...]}``. Paths may be relative to the datalist's folder. Every bundle obtains its data
through :func:`get_datalist`, which

* with no ``dataset_dir`` generates (once, cached) the synthetic phantom demo data;
* with a BTCV download (``RawData/Training/img`` + ``label``) builds the named split in memory;
* with a datalist JSON loads it;

and checks every file before anything trains: it exists, is readable, is a single-channel 3D image,
image and label grids agree, label values lie inside the label map. All problems are reported at once
in one :class:`~common.errors.InputError`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import InputError
from .input_rules import image_rule, label_grid_rule, label_values_rule
from .io import NIFTI_SUFFIXES, case_id, image_info, is_image_path, load_array
from .labels import BTCV_NUM_CLASSES

__all__ = [
    "BTCV_CASES",
    "SPLITS",
    "CV_FOLDS",
    "cv_folds",
    "split_name",
    "named_split",
    "split_label",
    "split_cases",
    "find_btcv_raw",
    "btcv_datalist",
    "check_items",
    "load_datalist_file",
    "get_datalist",
    "demo_data_dir",
    "ensure_demo_data",
    "find_images",
    "inference_inputs",
]

# The 30 labelled BTCV training cases (ANCHORS.md section 1).
BTCV_CASES: tuple[str, ...] = tuple(f"{i:04d}" for i in (*range(1, 11), *range(21, 41)))

_SYNAPSE_TRAIN = (
    "0005",
    "0006",
    "0007",
    "0009",
    "0010",
    "0021",
    "0023",
    "0024",
    "0026",
    "0027",
    "0028",
    "0030",
    "0031",
    "0033",
    "0034",
    "0037",
    "0039",
    "0040",
)
_SYNAPSE_TEST = ("0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038")

SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    # MONAI research-contributions dataset_0.json (UNETR, SwinUNETR): 24 training / 6 validation
    "dataset_0": {
        "training": tuple(c for c in BTCV_CASES if int(c) <= 34),
        "validation": tuple(c for c in BTCV_CASES if int(c) >= 35),
    },
    # the 2D papers (TransUNet, Swin-Unet, MT-UNet): 18 training / 12 test
    "synapse": {"training": _SYNAPSE_TRAIN, "validation": _SYNAPSE_TEST},
    # the model zoo's swin_unetr_btcv_segmentation bundle: first 21 of the sorted cases / last 9
    "model_zoo": {"training": BTCV_CASES[:21], "validation": BTCV_CASES[21:]},
}

CV_FOLDS, CV_SEED = 5, 12345


def cv_folds(cases: Sequence[str] = BTCV_CASES, n_splits: int = CV_FOLDS, seed: int = CV_SEED) -> list[dict]:
    """nnU-Net v2's default cross-validation split (``do_split`` in its trainer): scikit-learn's
    ``KFold(n_splits, shuffle=True, random_state=seed)`` over the sorted case identifiers, computed the same way
    (a ``numpy.random.RandomState(seed)`` shuffle of the indices, folds of ``n // k`` cases, the first ``n % k``
    folds one larger). Both lists of each fold are in sorted order."""
    keys = sorted(cases)
    order = np.arange(len(keys))
    np.random.RandomState(seed).shuffle(order)
    sizes = [len(keys) // n_splits + (1 if i < len(keys) % n_splits else 0) for i in range(n_splits)]
    folds, start = [], 0
    for size in sizes:
        held = set(order[start : start + size].tolist())
        start += size
        folds.append(
            {
                "training": tuple(k for i, k in enumerate(keys) if i not in held),
                "validation": tuple(k for i, k in enumerate(keys) if i in held),
            }
        )
    return folds


# 5-fold cross-validation on the 30 cases, as nnU-Net Revisited reports BTCV: ``cv5`` with a fold (0..4) trains on
# four fifths and validates on the rest; ``cv5`` alone is every case once, for scoring the out-of-fold predictions.
SPLITS["cv5"] = {"training": (), "validation": BTCV_CASES}
SPLITS.update({f"cv5_fold{k}": f for k, f in enumerate(cv_folds())})


def split_name(split: str, fold: int | str | None = None) -> str:
    """The named split for ``split`` and ``fold`` (``cv5`` + fold 2 -> ``cv5_fold2``); a fold only goes with ``cv5``."""
    if fold is None or fold == "":
        return split
    if split != "cv5":
        raise InputError(f"--fold {fold} given with split {split!r}", hint="folds belong to --split cv5; drop --fold")
    if str(fold) not in {str(k) for k in range(CV_FOLDS)}:
        raise InputError(f"fold {fold!r} does not exist", hint=f"use --fold 0 to {CV_FOLDS - 1} with --split cv5")
    return f"cv5_fold{int(fold)}"


def named_split(dataset_dir="", datalist_file="", split: str = "dataset_0", fold=None) -> str | None:
    """The named split a run's cases are (``dataset_0``, ``cv5_fold2``...): only when they come from a BTCV download
    without a datalist of one's own, the one case a published number can be compared with; else ``None``."""
    if datalist_file or not dataset_dir or find_btcv_raw(Path(dataset_dir).expanduser()) is None:
        return None
    return split_name(split, fold)


def split_label(dataset_dir="", datalist_file="", split: str = "dataset_0", fold=None) -> str:
    """What the cases of a run are, for result files: the named split of a BTCV download (see :func:`named_split`),
    ``demo phantoms`` for the generated demo data, or the datalist."""
    named = named_split(dataset_dir, datalist_file, split, fold)
    if named is not None:
        return named
    if datalist_file:
        return f"datalist {datalist_file}"
    return f"datalist in {dataset_dir}" if dataset_dir else "demo phantoms (generated, not BTCV)"


def split_cases(split: str, fold: int | str | None = None) -> dict[str, tuple[str, ...]]:
    """Case ids of a named split (``dataset_0``, ``synapse``, ``model_zoo``, ``cv5`` with or without a fold)."""
    split = split_name(split, fold)
    if split not in SPLITS:
        raise InputError(
            f"unknown split {split!r}",
            hint=f"choose one of: dataset_0, synapse, model_zoo, cv5 (with --fold 0..{CV_FOLDS - 1})",
        )
    return SPLITS[split]


def find_btcv_raw(root: str | os.PathLike) -> tuple[Path, Path] | None:
    """Locate ``img``/``label`` folders of a BTCV download under ``root`` (the download folder, ``RawData``,
    ``RawData/Training`` or the ``Training`` folder itself); ``None`` when not found."""
    root = Path(root)
    for base in (root / "RawData" / "Training", root / "Training", root):
        if (base / "img").is_dir() and (base / "label").is_dir():
            return base / "img", base / "label"
    return None


def _btcv_file(folder: Path, prefix: str, case: str) -> Path:
    for suffix in NIFTI_SUFFIXES[::-1]:
        p = folder / f"{prefix}{case}{suffix}"
        if p.exists():
            return p
    return folder / f"{prefix}{case}.nii.gz"  # reported as missing by check_items


def btcv_datalist(
    raw_root: str | os.PathLike, split: str = "dataset_0", relative_to: str | os.PathLike | None = None, fold=None
) -> dict:
    """Datalist of a named split over a BTCV download (``imgXXXX.nii.gz`` / ``labelXXXX.nii.gz``).

    Paths are absolute unless ``relative_to`` is given. Files are not checked here (see :func:`check_items`).
    """
    cases = split_cases(split, fold)
    split = split_name(split, fold)
    found = find_btcv_raw(raw_root)
    if found is None:
        raise InputError(
            f"{raw_root}: no BTCV download found (looked for RawData/Training/img and .../label)",
            hint="point at the folder that holds RawData/ (or at RawData/Training itself)",
        )
    img_dir, lab_dir = found
    out: dict = {"description": f"BTCV, split {split!r}", "split": split}
    for key, ids in cases.items():
        items = []
        for c in ids:
            item = {"image": _btcv_file(img_dir, "img", c), "label": _btcv_file(lab_dir, "label", c)}
            if relative_to is not None:
                item = {k: os.path.relpath(v, relative_to) for k, v in item.items()}
            items.append({k: str(v) for k, v in item.items()})
        out[key] = items
    return out


def _label_values(path: str) -> np.ndarray:
    return np.unique(load_array(path)[0])


def check_items(
    items: Sequence[dict],
    name: str = "datalist",
    require_label: bool = True,
    num_classes: int = BTCV_NUM_CLASSES,
    check_label_values: bool = True,
) -> None:
    """Check every item's files; raise one :class:`InputError` listing all problems.

    Checks: files exist and are readable, then the rules of :mod:`common.input_rules` (the image one 3D channel;
    the label, if required, one 3D volume on its image's grid with integer values in ``0..num_classes-1``).
    """
    problems: list[str] = []
    if len(items) == 0:
        raise InputError(f"{name}: the list of cases is empty", hint="give at least one case")
    for n, item in enumerate(items):
        if not isinstance(item, dict) or "image" not in item:
            problems.append(f"{name}[{n}]: each entry needs an 'image' path, got {item!r}")
            continue
        if require_label and "label" not in item:
            problems.append(f"{name}[{n}] ({item['image']}): no 'label' path")
            continue
        try:
            img = image_info(item["image"])
        except InputError as e:
            problems.extend(e.problems)
            img = None
        if img is not None:
            bad = image_rule(img.path, img.channels, img.spatial_shape)
            problems.extend(bad)
            img = None if bad else img
        if not require_label or "label" not in item:
            continue
        try:
            lab = image_info(item["label"])
        except InputError as e:
            problems.extend(e.problems)
            continue
        grid = label_grid_rule(
            lab.path,
            lab.channels,
            lab.spatial_shape,
            lab.affine,
            *((img.path, img.spatial_shape, img.affine) if img is not None else ()),
        )
        if grid:
            problems.extend(grid)
            continue
        if check_label_values:
            try:
                problems.extend(label_values_rule(lab.path, _label_values(str(item["label"])), num_classes))
            except InputError as e:
                problems.extend(e.problems)
    if problems:
        raise InputError(problems, hint="fix or remove these cases, then run again")


def _absolute(items: Iterable[dict], base: Path) -> list[dict]:
    out = []
    for item in items:
        if not isinstance(item, dict):
            out.append(item)
            continue
        new = dict(item)
        for k in ("image", "label"):
            if k in new and isinstance(new[k], str):
                p = Path(os.path.expanduser(new[k]))
                new[k] = os.path.normpath(p if p.is_absolute() else base / p)
        out.append(new)
    return out


def load_datalist_file(path: str | os.PathLike) -> dict:
    """Read a datalist JSON and make its paths absolute (relative paths are relative to its folder)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: datalist file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable JSON datalist ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: a datalist is a JSON object with 'training'/'validation' lists")
    base = path.parent.resolve()
    for key in ("training", "validation", "test", "testing"):
        if key in data:
            if not isinstance(data[key], list):
                raise InputError(f"{path}: '{key}' must be a list of cases")
            data[key] = _absolute(data[key], base)
    data["_source"] = str(path)
    return data


def demo_data_dir() -> Path:
    """Where the demo phantoms live: ``$BTCV_DEMO_DIR`` or ``$XDG_CACHE_HOME/btcv-bundles/demo``."""
    env = os.environ.get("BTCV_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "btcv-bundles" / "demo"


def ensure_demo_data(out_dir: str | os.PathLike | None = None) -> Path:
    """Generate the demo phantoms if they are not there yet; return the datalist path."""
    from .phantom import write_phantom_dataset

    return write_phantom_dataset(out_dir or demo_data_dir(), progress=True)


_CHECKED: dict[tuple, None] = {}


def _stat_key(items: Sequence[dict]) -> tuple:
    key = []
    for it in items:
        for k in ("image", "label"):
            p = it.get(k) if isinstance(it, dict) else None
            try:
                st = os.stat(p) if p else None
                key.append((p, st.st_size, st.st_mtime_ns) if st else (p,))
            except OSError:
                key.append((p, None))
    return tuple(key)


def get_datalist(
    dataset_dir: str | os.PathLike | None = "",
    split: str = "dataset_0",
    datalist_file: str | os.PathLike | None = "",
    keys: Sequence[str] = ("training", "validation"),
    check: bool = True,
    require_label: bool = True,
    fold: int | str | None = None,
) -> dict:
    """The datalist a bundle trains and evaluates on, with absolute paths, checked (see module doc).

    Args:
        dataset_dir: ``""``/``None`` for the embedded demo data; a BTCV download; or a folder holding
            the datalist file.
        split: the BTCV split to build from a BTCV download (``dataset_0``, ``synapse``, ``model_zoo``, ``cv5``).
        datalist_file: an explicit datalist JSON (relative to ``dataset_dir`` if not absolute).
        keys: the lists that must be present and non-empty.
        check: check every file (see :func:`check_items`); results are remembered per process while the
            files are unchanged.
        fold: with ``split="cv5"``, the cross-validation fold (0..4); without one, ``cv5`` has every case for
            validation (scoring out-of-fold predictions) and none for training.
    """
    if split == "cv5" and fold in (None, "") and "training" in keys:
        raise InputError(
            "split 'cv5' needs a fold to train", hint=f"add --fold 0 (one of 0..{CV_FOLDS - 1}); nnU-Net's 5-fold split"
        )
    split_name(split, fold)  # a fold given with another split, or an unknown fold, stops here
    dataset_dir = str(dataset_dir or "")
    datalist_file = str(datalist_file or "")
    if datalist_file:
        p = Path(datalist_file).expanduser()
        if not p.is_absolute() and dataset_dir:
            p = Path(dataset_dir).expanduser() / p
        data = load_datalist_file(p)
    elif not dataset_dir:
        data = load_datalist_file(ensure_demo_data())
    else:
        root = Path(dataset_dir).expanduser()
        if not root.exists():
            raise InputError(
                f"{root}: dataset_dir not found", hint="give the folder of your BTCV download or of a datalist JSON"
            )
        if find_btcv_raw(root) is not None:
            data = btcv_datalist(root, split, fold=fold)
        else:
            name = split_name(split, fold)
            candidates = [root / f"datalist_{name}.json", root / f"{name}.json", root / "dataset.json"]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise InputError(
                    f"{root}: neither a BTCV download (RawData/Training/img, label) nor a datalist "
                    f"({', '.join(c.name for c in candidates)})",
                    hint="run `python -m common.tools.prepare` to write a datalist, or set datalist_file",
                )
            data = load_datalist_file(found)
    source = data.get("_source", dataset_dir or "the BTCV download")
    for key in keys:
        if key not in data or not data[key]:
            raise InputError(f"{source}: the datalist has no '{key}' cases", hint=f"add a non-empty '{key}' list")
    if check:
        for key in keys:
            sk = (key, require_label, _stat_key(data[key]))
            if sk not in _CHECKED:
                check_items(data[key], name=f"{source} [{key}]", require_label=require_label)
                _CHECKED[sk] = None
    return data


def find_images(folder: str | os.PathLike, pattern: str | None = None) -> list[dict]:
    """Inference inputs under ``folder``: NIfTI/ITK image files and DICOM series folders, sorted.

    A single image file may be given instead of a folder. ``pattern`` is an optional regular expression
    the file name must match (e.g. ``img.*`` to skip label files).
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise InputError(f"{folder}: input not found", hint="set dataset_dir to a CT file or a folder of CT files")
    if folder.is_file() or is_image_path(folder):  # one image file, or a folder that is one DICOM series
        return [{"image": str(folder)}]
    rx = re.compile(pattern) if pattern else None
    found = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if rx is not None and not rx.search(child.name):
            continue
        if is_image_path(child):
            found.append({"image": str(child)})
    if not found:
        raise InputError(
            f"{folder}: no images found (NIfTI .nii/.nii.gz, .mha, .mhd, .nrrd, or DICOM series folders)",
            hint="set dataset_dir to a CT file or a folder of CT files",
        )
    by_name: dict[str, list[str]] = {}
    for item in found:
        by_name.setdefault(case_id(item["image"]), []).append(Path(item["image"]).name)
    clashes = {n: files for n, files in by_name.items() if len(files) > 1}
    if clashes:  # each would be written as <name>_seg.nii.gz: one would silently overwrite the other
        raise InputError(
            [
                f"{folder}: {' and '.join(files)} would both be written as {n}_seg.nii.gz"
                for n, files in clashes.items()
            ],
            hint="rename one of them, or choose with --image_pattern; nothing was run",
        )
    return found


def inference_inputs(dataset_dir: str | os.PathLike | None = "", pattern: str | None = None) -> list[dict]:
    """Images to run inference on: ``dataset_dir`` (a CT file or a folder, see :func:`find_images`), or, when
    it is empty, the images of the demo data's validation list."""
    if dataset_dir:
        return find_images(dataset_dir, pattern)
    demo = load_datalist_file(ensure_demo_data())
    return [{"image": item["image"]} for item in demo["validation"]]
