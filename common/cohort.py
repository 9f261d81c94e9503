"""Inference over a cohort: shared out over processes, resumable, reporting what it did.

Every bundle's ``inference.json`` takes its cases from :func:`cohort_inputs`:

* under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` in the environment) each process takes every ``WORLD_SIZE``-th
  case of the sorted input list starting at its ``RANK``: disjoint shares that together cover the cohort, on
  one node or several, with no communication between the processes (each runs on ``cuda:LOCAL_RANK`` when
  there are GPUs);
* a case whose label map is already in ``output_dir`` and complete (its header matches the input's grid and
  its gzip stream ends where the header says) is skipped, so an interrupted cohort run continues where it
  stopped (outputs are written atomically: a killed run leaves whole files or none);
* a case whose image cannot be read or is not one 3D channel is reported and left out, and so is one that fails
  its checks once loaded (NaN voxels: :class:`CohortDataset`, :func:`cohort_iteration`); the others go on, and the
  run ends with one message naming each such file (and a non-zero exit).

:func:`cohort_summary` prints, per process, the cases written, skipped as already done, and left out.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from monai.data import Dataset

from .errors import InputError, find_input_error
from .input_rules import image_rule
from .io import ImageInfo, case_id, image_info

__all__ = [
    "process_share",
    "output_path",
    "is_complete",
    "cohort_inputs",
    "cohort_summary",
    "CohortDataset",
    "cohort_iteration",
]

OUTPUT_POSTFIX = "seg"
FAILED = "failed_case"  # the item a case that failed its checks becomes (CohortDataset -> cohort_iteration)
_RUNS: dict[str, dict] = {}  # output folder -> what cohort_inputs decided, for cohort_summary


def _run_of(output_dir) -> dict:
    return _RUNS.setdefault(str(Path(output_dir).resolve()), {"who": "", "todo": [], "done": [], "failed": []})


def process_share() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""
    return int(os.environ.get("RANK", 0)), max(int(os.environ.get("WORLD_SIZE", 1)), 1)


def output_path(image: str, output_dir: str | os.PathLike) -> Path:
    """Where the bundles' ``SaveImaged`` writes the label map of ``image``."""
    return Path(output_dir) / f"{case_id(image)}_{OUTPUT_POSTFIX}.nii.gz"


def is_complete(out: Path, image: str | ImageInfo) -> bool:
    """``out`` holds a whole label map on ``image``'s grid (a path, or its header already read): same shape and
    affine, and a gzip stream whose recorded size (its last 4 bytes) is the size the NIfTI header implies."""
    if not out.is_file():
        return False
    try:
        got, want = image_info(out), image if isinstance(image, ImageInfo) else image_info(image)
    except InputError:
        return False
    if got.spatial_shape != want.spatial_shape or not np.allclose(got.affine, want.affine, atol=1e-3):
        return False
    import nibabel as nib

    try:
        header = nib.load(str(out)).header
        # a single-file NIfTI's data starts after the header, its extension flag and extensions (vox_offset may be
        # left 0 by the writer)
        offset = max(int(header["vox_offset"]), 352 + sum(e.get_sizeondisk() for e in header.extensions))
        expected = offset + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
        with open(out, "rb") as f:
            f.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", f.read(4))
    except (OSError, ValueError, struct.error):
        return False
    return isize == expected % (1 << 32)


def cohort_inputs(items: list[dict], output_dir: str | os.PathLike | None = None) -> list[dict]:
    """This process's share of ``items`` (``{"image": path}``), less the cases already written to ``output_dir``
    and the images that cannot be read (reported). Prints one line saying what is left to do."""
    rank, world = process_share()
    share = list(items)[rank::world]
    todo, done, failed = [], [], []
    for item in share:
        image = str(item["image"])
        try:
            info = image_info(image)
            problems = image_rule(info.path, info.channels, info.spatial_shape)
        except InputError as e:
            problems = list(e.problems)
        if problems:
            failed.extend(problems)
        elif output_dir and is_complete(output_path(image, output_dir), info):
            done.append(image)
        else:
            todo.append(item)
    who = f"process {rank} of {world}: " if world > 1 else ""
    print(
        f"{who}{len(share)} case(s): {len(todo)} to predict, {len(done)} already in {output_dir}, "
        f"{len(failed)} left out",
        flush=True,
    )
    for p in failed:
        print(f"  left out: {p}", flush=True)
    if output_dir:
        _run_of(output_dir).update(who=who, todo=todo, done=done, failed=failed)
    if not todo and (done or failed):
        print(f"{who}nothing left to predict", flush=True)
    return todo


def cohort_summary(output_dir: str | os.PathLike) -> None:
    """Print what this process's run did: cases written, skipped as already done, left out; then, if any case was
    left out, end with one :class:`InputError` naming each file and its problem (the others are written)."""
    run = _RUNS.get(str(Path(output_dir).resolve()))
    if run is None:
        print(f"predictions written to {output_dir}", flush=True)
        return
    written = sum(is_complete(output_path(it["image"], output_dir), str(it["image"])) for it in run["todo"])
    print(
        f"{run['who']}{written} written, {len(run['done'])} skipped (already done), {len(run['failed'])} left out: "
        f"predictions written to {output_dir}",
        flush=True,
    )
    if run["failed"]:
        hint = "fix or remove these files and run again: the cases already written are skipped"
        raise InputError(run["failed"], hint=hint)


class CohortDataset(Dataset):
    """MONAI's ``Dataset`` for a cohort: a case whose loading or checks raise an :class:`InputError` (NaN voxels)
    becomes ``{FAILED: problems}`` for :func:`cohort_iteration` to report, instead of ending the run; in
    DataLoader workers too (the problems travel as data). ``skip_failed=False`` (the evaluation, which must score
    every case) raises instead."""

    def __init__(self, data, transform=None, skip_failed: bool = True):
        super().__init__(data, transform)
        self.skip_failed = bool(skip_failed)

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as e:
            err = find_input_error(e)
            if err is None or not self.skip_failed:
                raise
            return {FAILED: "; ".join(err.problems)}


def cohort_iteration(output_dir: str | os.PathLike, progress: bool | str = True):
    """The evaluator's ``iteration_update``: a batch of :class:`CohortDataset` failures is reported (and listed by
    :func:`cohort_summary`) with no forward and nothing written; any other batch takes the evaluator's own iteration
    (network, postprocessing, writing), and with ``progress`` one line says which case it was and how long it took."""
    from .bundle import as_bool

    progress = as_bool(progress)
    done = [0]

    def iteration(engine, batch):
        import time

        if isinstance(batch, dict) and FAILED in batch:
            for problem in batch[FAILED]:
                print(f"  left out: {problem}", flush=True)
                _run_of(output_dir)["failed"].append(problem)
            return None
        t = time.perf_counter()
        out = engine._iteration(engine, batch)
        if progress:
            done[0] += 1
            who, total = _run_of(output_dir)["who"], engine.state.epoch_length
            print(f"{who}case {done[0]}/{total}: {_case_name(batch)} in {time.perf_counter() - t:.1f} s", flush=True)
        return out

    return iteration


def _case_name(batch) -> str:
    image = batch.get("image") if isinstance(batch, dict) else None
    names = getattr(image, "meta", {}).get("filename_or_obj") if image is not None else None
    name = names[0] if isinstance(names, (list, tuple)) and names else names
    return case_id(str(name)) if name else "?"
