"""Import the TransUNet authors' preprocessed Synapse data into this project's datalist format.

    python -m common.tools.synapse /data/Synapse --output /data/synapse_nifti [--labels btcv13|synapse8]
                             [--btcv-raw /data/BTCV | --spacing 0.76 0.76 3.0]

The authors' data (``train_npz/caseXXXX_sliceYYY.npz`` axial slices, ``test_vol_h5/caseXXXX.npy.h5``
volumes; keys ``image`` and ``label``) holds CT clipped to [-125, 275] HU and scaled to [0, 1] per volume, and
8-organ labels. The importer

* stacks every training case's slices in slice order (checking that none is missing and all share one
  shape) and reads every test volume, validating every file (readable, keys present, shapes agree, image
  values in [0, 1], integer labels within the id map);
* writes int16 NIfTI volumes in Hounsfield units again (``image * 400 - 125``, so the 2D bundles' HU window
  [-125, 275] -> [0, 1] gives back the authors' values up to 1/400) and uint8 labels, either remapped to the
  BTCV ids (``--labels btcv13``, the default: the other five organs are then absent) or in this project's
  9-class Synapse order (``--labels synapse8``: 1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney, 5 liver,
  6 pancreas, 7 spleen, 8 stomach);
* writes a datalist: the 18 training cases under ``training`` and the 12 test cases under ``validation``
  (what the bundles' ``evaluate.json`` scores), with the spacing it used recorded.

Geometry: the files carry no spacing or orientation. With ``--btcv-raw`` (the original BTCV download), each
case takes the affine of its original NIfTI (after checking the shapes agree), so the volumes land exactly on
the original grids. Otherwise the affine is ``diag(--spacing)`` (default 1 x 1 x 1 mm, stated in the
datalist): the slices then reach the networks in their stored orientation, as in the papers, and HD95 in
voxels (the ``synapse8`` protocol) is exact while millimetre figures are only as right as the spacing given.

Label ids of the authors' files: ANCHORS.md reports 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder,
5 liver, 6 stomach, 7 aorta, 8 pancreas, but this is unverified and third-party code disagrees, so the id map
is an option (``--data-ids``) and is checked against the anatomy of the imported data: the liver must be the
largest organ, the aorta the most elongated along the body axis, and liver and right kidney must lie on the
side opposite to the spleen and left kidney. A map that fails these checks stops the import with the per-id
statistics, so a wrong assumption cannot silently swap organs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import InputError, command
from ..io import atomic_write_bytes, atomic_write_text, image_info, nifti_bytes
from ..labels import BTCV13, ID_SPACES, SYNAPSE_AUTHOR_DATA_IDS, SYNAPSE_ORGAN_ORDER, channel_def, organ

__all__ = ["DATA_ID_MAPS", "import_synapse", "check_anatomy", "main"]

# Candidate id maps of the authors' files (name -> {organ key: id}). "anchors" is ANCHORS.md's report;
# "alphabetical" is the papers' column order, which some third-party code assumes.
DATA_ID_MAPS: dict[str, dict[str, int]] = {
    "anchors": dict(SYNAPSE_AUTHOR_DATA_IDS),
    "alphabetical": {k: i for i, k in enumerate(SYNAPSE_ORGAN_ORDER, start=1)},
}

_TRAIN_RX = re.compile(r"^case(\d+)_slice(\d+)\.npz$")
_TEST_RX = re.compile(r"^case(\d+)\.npy\.h5$")
HU_MIN, HU_MAX = -125.0, 275.0


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError("reading test_vol_h5/*.npy.h5 needs h5py", hint="pip install h5py") from e
    return h5py


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("image", "label") if k not in z.files]
            if missing:
                raise InputError(f"{path}: missing key(s) {missing} (expected 'image' and 'label')")
            return np.asarray(z["image"]), np.asarray(z["label"])
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: cannot read ({type(e).__name__}: {e})") from e


def _load_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise InputError(f"{path}: missing dataset(s) {missing} (expected 'image' and 'label')")
            return np.asarray(f["image"][()]), np.asarray(f["label"][()])
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: cannot read ({type(e).__name__}: {e})") from e


def _validate(name: str, image: np.ndarray, label: np.ndarray, n_ids: int, problems: list[str]) -> bool:
    ok = True
    if image.shape != label.shape:
        problems.append(f"{name}: image shape {image.shape} differs from label shape {label.shape}")
        return False
    if image.size and (np.nanmin(image) < -1e-3 or np.nanmax(image) > 1 + 1e-3 or not np.isfinite(image).all()):
        problems.append(
            f"{name}: image values outside [0, 1] ({np.nanmin(image):.3g}..{np.nanmax(image):.3g}); not the authors' preprocessed data"
        )
        ok = False
    lab = np.unique(label)
    bad = lab[(lab < 0) | (lab > n_ids) | (lab != np.round(lab))]
    if bad.size:
        problems.append(f"{name}: label values {bad[:8].tolist()} outside 0..{n_ids}")
        ok = False
    return ok


def _collect(src: Path) -> tuple[dict[str, list[tuple[int, Path]]], dict[str, Path]]:
    train_dir, test_dir = src / "train_npz", src / "test_vol_h5"
    if not train_dir.is_dir() and not test_dir.is_dir():
        raise InputError(
            f"{src}: neither train_npz/ nor test_vol_h5/ found",
            hint="point at the folder holding the authors' Synapse data",
        )
    slices: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    tests: dict[str, Path] = {}
    stray = []
    if train_dir.is_dir():
        for p in sorted(train_dir.iterdir()):
            m = _TRAIN_RX.match(p.name)
            if m:
                slices[m.group(1)].append((int(m.group(2)), p))
            elif not p.name.startswith("."):
                stray.append(str(p))
    if test_dir.is_dir():
        for p in sorted(test_dir.iterdir()):
            m = _TEST_RX.match(p.name)
            if m:
                tests[m.group(1)] = p
            elif not p.name.startswith("."):
                stray.append(str(p))
    if stray:
        raise InputError(
            [f"{s}: unexpected file name (expected caseXXXX_sliceYYY.npz / caseXXXX.npy.h5)" for s in stray[:20]]
        )
    return slices, tests


def _stack_case(case: str, items: list[tuple[int, Path]], problems: list[str], n_ids: int):
    items = sorted(items)
    idx = [i for i, _ in items]
    if idx != list(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - set(idx))
        problems.append(f"case{case}: slices {missing[:10]} missing (have {len(idx)} of 0..{max(idx)})")
        return None
    imgs, labs = [], []
    shape = None
    for _, p in items:
        try:
            im, lb = _load_npz(p)
        except InputError as e:
            problems.extend(e.problems)
            return None
        if im.ndim != 2:
            problems.append(f"{p}: expected a 2D slice, got shape {im.shape}")
            return None
        if shape is None:
            shape = im.shape
        elif im.shape != shape:
            problems.append(f"{p}: slice shape {im.shape} differs from the case's {shape}")
            return None
        if not _validate(str(p), im, lb, n_ids, problems):
            return None
        imgs.append(im)
        labs.append(lb)
    return np.stack(imgs, axis=-1), np.stack(labs, axis=-1)


def check_anatomy(stats: dict[int, dict], id_map: dict[str, int], volume_axis: int = 2) -> list[str]:
    """Problems found when ``id_map`` is checked against per-id statistics (empty list: plausible).

    ``stats[id]`` holds ``voxels`` (total over cases), ``centroid_x`` (mean over cases of the in-plane first-axis
    centroid, relative to the volume centre) and ``elongation`` (mean z-extent / in-plane extent).
    """
    problems = []
    present = {k: i for k, i in id_map.items() if i in stats and stats[i]["voxels"] > 0}
    if len(present) < len(id_map):
        return problems  # too little data to judge (e.g. tiny test sets); the import reports counts anyway
    vox = {k: stats[i]["voxels"] for k, i in present.items()}
    if max(vox, key=vox.get) != "liver":
        problems.append(
            f"the largest organ is id {id_map[max(vox, key=vox.get)]}, not the liver's id {id_map['liver']}"
        )
    elong = {k: stats[i]["elongation"] for k, i in present.items()}
    if max(elong, key=elong.get) != "aorta":
        problems.append(
            f"the most elongated organ along the body axis is id {id_map[max(elong, key=elong.get)]}, not the aorta's id {id_map['aorta']}"
        )
    x = {k: stats[i]["centroid_x"] for k, i in present.items()}
    right = np.sign(x["liver"])
    for key, side in (("kidney_right", right), ("spleen", -right), ("kidney_left", -right)):
        if np.sign(x[key]) != side:
            problems.append(
                f"id {id_map[key]} ({organ(key).name}) lies on the {'same' if side != right else 'opposite'} side as the liver, anatomy says the {'same' if side == right else 'opposite'}"
            )
    return problems


def _case_stats(label: np.ndarray, acc: dict[int, dict]):
    nx = label.shape[0]
    for i in np.unique(label):
        i = int(i)
        if i == 0:
            continue
        idx = np.nonzero(label == i)
        s = acc.setdefault(i, {"voxels": 0, "cx": [], "el": []})
        s["voxels"] += int(idx[0].size)
        s["cx"].append(float(idx[0].mean() - (nx - 1) / 2))
        inplane = max(np.ptp(idx[0]), np.ptp(idx[1])) + 1
        s["el"].append(float((np.ptp(idx[2]) + 1) / inplane))


def _finish_stats(acc: dict[int, dict]) -> dict[int, dict]:
    return {
        i: {"voxels": s["voxels"], "centroid_x": float(np.mean(s["cx"])), "elongation": float(np.mean(s["el"]))}
        for i, s in acc.items()
    }


def import_synapse(
    src: str | os.PathLike,
    output: str | os.PathLike,
    labels: str = BTCV13,
    data_ids: str | dict = "anchors",
    btcv_raw: str | os.PathLike | None = None,
    spacing=(1.0, 1.0, 1.0),
    check_ids: bool = True,
    progress: bool = True,
) -> Path:
    """Convert the authors' Synapse data under ``src`` into NIfTI + ``dataset.json`` under ``output``: the
    arguments checked, every case read and checked, the id map checked against the anatomy, then (only when all
    of it holds) the files written."""
    src, out = Path(src).expanduser(), Path(output).expanduser()
    id_map = _id_map(data_ids)
    if labels not in ID_SPACES:
        raise InputError(f"unknown label space {labels!r}", hint="use btcv13 or synapse8")
    if out.resolve() == src.resolve():
        raise InputError(f"{out}: write the import to a different folder than the source data")
    volumes = _read_volumes(src, progress)
    if check_ids:
        _check_id_map(volumes, id_map)
    affines = _btcv_affines(btcv_raw, volumes) if btcv_raw else {}
    lut = np.zeros(9, np.uint8)
    for key, i in id_map.items():
        lut[i] = organ(key).id if labels == BTCV13 else SYNAPSE_ORGAN_ORDER.index(key) + 1
    items: dict[str, list] = {"training": [], "validation": []}
    for case, (im, lb, split) in sorted(volumes.items()):
        affine = affines.get(case, np.diag([*map(float, spacing), 1.0]))
        hu = np.rint(np.clip(im.astype(np.float64), 0.0, 1.0) * (HU_MAX - HU_MIN) + HU_MIN).astype(np.int16)
        lab = lut[np.rint(lb).astype(np.int64)]
        atomic_write_bytes(out / "images" / f"case{case}.nii.gz", nifti_bytes(hu, affine))
        atomic_write_bytes(out / "labels" / f"case{case}.nii.gz", nifti_bytes(lab, affine))
        items[split].append({"image": f"images/case{case}.nii.gz", "label": f"labels/case{case}.nii.gz"})
    datalist = {
        "description": f"TransUNet authors' preprocessed Synapse data imported from {src}",
        "labels": channel_def(labels),
        "label_space": labels,
        "source_data_ids": id_map,
        "spacing": "original BTCV affines"
        if btcv_raw
        else f"nominal {' x '.join(f'{s:g}' for s in spacing)} mm (the files carry none)",
        "intensity": "int16 HU = image * 400 - 125 (the authors clipped to [-125, 275] and scaled to [0, 1])",
        "training": items["training"],
        "validation": items["validation"],
    }
    path = out / "dataset.json"
    atomic_write_text(path, json.dumps(datalist, indent=2) + "\n")
    return path


def _id_map(data_ids: str | dict) -> dict[str, int]:
    """The organ -> id map of the authors' files: a named one of :data:`DATA_ID_MAPS` or one given, checked."""
    if isinstance(data_ids, str) and data_ids not in DATA_ID_MAPS:
        raise InputError(f"unknown data id map {data_ids!r}", hint=f"choose one of {sorted(DATA_ID_MAPS)}")
    id_map = DATA_ID_MAPS[data_ids] if isinstance(data_ids, str) else dict(data_ids)
    if sorted(id_map.values()) != list(range(1, 9)) or set(id_map) != set(SYNAPSE_ORGAN_ORDER):
        raise InputError(f"data id map must give the 8 Synapse organs the ids 1..8, got {id_map}")
    return id_map


def _read_volumes(src: Path, progress: bool) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Every case as ``(image, label, split)`` in (H, W, Z): the training slices stacked, the test volumes
    transposed. Every problem of every file is collected first and raised as one :class:`InputError`."""
    slices, tests = _collect(src)
    problems: list[str] = []
    volumes: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    cases = [("training", c) for c in sorted(slices)] + [("validation", c) for c in sorted(tests)]
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, desc="reading Synapse cases", unit="case")
    for split, case in cases:
        vol = (
            _stack_case(case, slices[case], problems, 8) if split == "training" else _test_volume(tests[case], problems)
        )
        if vol is not None:
            volumes[case] = (vol[0], vol[1], split)
    overlap = sorted(set(slices) & set(tests))
    if overlap:
        problems.append(f"cases in both train_npz and test_vol_h5: {overlap}")
    if problems:
        raise InputError(problems, hint="nothing was written; fix or remove these files")
    if not volumes:
        raise InputError(f"{src}: no cases found")
    return volumes


def _test_volume(path: Path, problems: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """One ``test_vol_h5`` case in (H, W, Z), or None with its problems added."""
    try:
        im, lb = _load_h5(path)
    except InputError as e:
        problems.extend(e.problems)
        return None
    if im.ndim != 3:
        problems.append(f"{path}: expected a (Z, H, W) volume, got shape {im.shape}")
        return None
    if not _validate(str(path), im, lb, 8, problems):
        return None
    return np.transpose(im, (1, 2, 0)), np.transpose(lb, (1, 2, 0))


def _check_id_map(volumes: dict, id_map: dict[str, int]) -> None:
    """Refuse an id map that does not fit the anatomy of the labels (and name the map that does)."""
    acc: dict[int, dict] = {}
    for _, lb, _ in volumes.values():
        _case_stats(lb, acc)
    stats = _finish_stats(acc)
    bad = check_anatomy(stats, id_map)
    if not bad:
        return
    lines = [
        f"id {i}: {s['voxels']} voxels, x-centroid {s['centroid_x']:+.1f}, elongation {s['elongation']:.2f}"
        for i, s in sorted(stats.items())
    ]
    others = [n for n, m in DATA_ID_MAPS.items() if m != id_map and not check_anatomy(stats, m)]
    fix = f"The map '{others[0]}' fits: use --data-ids {others[0]}" if others else "Give the right map with --data-ids"
    raise InputError(
        [f"the label id map does not fit the data: {b}" for b in bad] + lines, hint=f"nothing was written. {fix}"
    )


def _btcv_affines(btcv_raw, volumes: dict) -> dict[str, np.ndarray]:
    """The original BTCV affine of each case, from the BTCV download (shapes must match)."""
    from ..data import find_btcv_raw

    found = find_btcv_raw(btcv_raw)
    if found is None:
        raise InputError(f"{btcv_raw}: no BTCV download found (RawData/Training/img)")
    affines, problems = {}, []
    for case, (im, _, _) in volumes.items():
        raw = found[0] / f"img{case}.nii.gz"
        info = image_info(raw)
        if tuple(info.spatial_shape) != im.shape:
            problems.append(f"case{case}: shape {im.shape} differs from {raw} {info.spatial_shape}")
        affines[case] = info.affine
    if problems:
        raise InputError(problems, hint="nothing was written: the BTCV download does not match these cases")
    return affines


@command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.tools.synapse", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="folder holding train_npz/ and test_vol_h5/")
    ap.add_argument("--output", required=True, help="where to write images/, labels/ and dataset.json")
    ap.add_argument("--labels", default=BTCV13, choices=list(ID_SPACES), help="label ids to write (default btcv13)")
    ap.add_argument("--data-ids", default="anchors", choices=sorted(DATA_ID_MAPS), help="id map of the authors' files")
    ap.add_argument("--btcv-raw", default=None, help="original BTCV download: take each case's affine from it")
    ap.add_argument(
        "--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0], help="nominal spacing without --btcv-raw"
    )
    ap.add_argument("--no-id-check", action="store_true", help="skip the anatomical check of the id map")
    args = ap.parse_args(argv)
    path = import_synapse(
        args.src, args.output, args.labels, args.data_ids, args.btcv_raw, args.spacing, not args.no_id_check
    )
    d = json.loads(path.read_text(encoding="utf-8"))
    print(
        f"wrote {path}: {len(d['training'])} training and {len(d['validation'])} validation (test) cases, labels {args.labels}"
    )
    print(
        f"train a 2D bundle on it: python -m monai.bundle run --config_file bundles/transunet_btcv/configs/train.json --datalist_file {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
