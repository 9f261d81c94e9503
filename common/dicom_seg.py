"""DICOM Segmentation output: ``--output_format dicom_seg`` writes ``<case>_seg.dcm`` beside the NIfTI label map
when the input is a DICOM series, through highdicom (``pip install -e ".[dicom]"``).

The SEG references the source series (same patient, study and frame of reference; one frame per source slice
and segment, each frame naming its source instance), holds one binary segment per organ present, numbered 1..n
in the protocol's organ order, each coded with SNOMED CT (category: anatomical structure) and labelled with the
protocol's organ name. The algorithm is identified by the bundle's name and version. Written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .errors import InputError
from .io import atomic_path, case_id, dicom_series_ids, read_sitk
from .labels import BTCV13, id_space, organ_names

__all__ = ["OUTPUT_FORMATS", "SNOMED", "DicomSegd", "wants_dicom_seg", "write_dicom_seg"]

OUTPUT_FORMATS = ("nifti", "dicom_seg")


def wants_dicom_seg(output_format: str) -> bool:
    """``--output_format``: ``nifti`` (the label map alone) or ``dicom_seg`` (a DICOM SEG as well)."""
    if output_format not in OUTPUT_FORMATS:
        raise InputError(
            f"--output_format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}",
            "use nifti (the default) or dicom_seg (for a DICOM series input)",
        )
    return output_format == "dicom_seg"


# SNOMED CT concepts of the BTCV organs, by organ key (the codes DICOM CID 7150 and TotalSegmentator's DICOM-SEG output use).
# The BTCV "portal and splenic vein" label covers both veins: coded as the portal vein, its label names both.
SNOMED = {
    "spleen": ("78961009", "Spleen"),
    "kidney_right": ("9846003", "Right kidney"),
    "kidney_left": ("18639004", "Left kidney"),
    "gallbladder": ("28231008", "Gallbladder"),
    "esophagus": ("32849002", "Esophagus"),
    "liver": ("10200004", "Liver"),
    "stomach": ("69695003", "Stomach"),
    "aorta": ("15825003", "Aorta"),
    "ivc": ("64131007", "Inferior vena cava"),
    "portal_splenic_vein": ("32764006", "Portal vein"),
    "pancreas": ("15776009", "Pancreas"),
    "adrenal_right": ("9777000", "Right adrenal gland"),
    "adrenal_left": ("23451007", "Left adrenal gland"),
}


def _highdicom():
    try:
        import highdicom
        import pydicom
    except ImportError as e:
        raise InputError(
            f"--output_format dicom_seg needs highdicom, which is not installed ({e})",
            'pip install -e ".[dicom]" (or pip install highdicom), or leave --output_format at nifti',
        ) from None
    return highdicom, pydicom


def _source_files(folder: str) -> list[str]:
    """The files of the one DICOM series in ``folder`` in the order ITK stacks them (slice ``k`` of the image the
    bundle read is file ``k``)."""
    series = dicom_series_ids(folder) if os.path.isdir(folder) else ()
    if len(series) != 1:
        read_sitk(folder)  # names the problem: not a folder of one DICOM series
        raise InputError(
            f"{folder}: --output_format dicom_seg needs a DICOM series as input",
            "give the folder of the series, or leave --output_format at nifti",
        )
    import SimpleITK as sitk

    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series[0]))


def write_dicom_seg(
    labels: np.ndarray,
    source: str | os.PathLike,
    out: str | os.PathLike,
    space: str = BTCV13,
    algorithm: tuple[str, str] = ("BTCV bundle", "0"),
) -> Path:
    """Write the label map ``labels`` (indexed (x, y, z) on the grid of the DICOM series in the folder
    ``source``, as the bundles read it) as a DICOM SEG at ``out``. Returns ``out``."""
    hd, pydicom = _highdicom()
    from pydicom.sr.codedict import codes

    files = _source_files(os.fspath(source))
    images = [pydicom.dcmread(f) for f in files]
    frames = np.ascontiguousarray(np.asarray(labels).transpose(2, 1, 0))  # (slice, row, column)
    rows, cols = int(images[0].Rows), int(images[0].Columns)
    if frames.shape != (len(images), rows, cols):
        raise InputError(
            f"{source}: the prediction's grid {tuple(np.asarray(labels).shape)} is not the series' "
            f"({cols}, {rows}, {len(images)})"
        )
    organs, names = id_space(space), organ_names(space)
    present = [i for i in range(1, len(organs) + 1) if (frames == i).any()]
    mask = np.zeros(frames.shape, dtype=np.uint8)

    def describe(number: int, label: int):
        value, meaning = SNOMED[organs[label - 1]]
        return hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names[label - 1],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(value=value, scheme_designator="SCT", meaning=meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=algorithm[0], version=algorithm[1], family=codes.cid7162.ArtificialIntelligence
            ),
        )

    for number, label in enumerate(present, start=1):
        mask[frames == label] = number
    # a SEG needs a segment: an empty prediction gets the first organ, with no voxel
    descriptions = [describe(n, label) for n, label in enumerate(present or [1], start=1)]
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(images[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="BTCV bundles",
        manufacturer_model_name=algorithm[0],
        software_versions=algorithm[1],
        device_serial_number="0",
        series_description=f"{algorithm[0]} segmentation",
        omit_empty_frames=True,
    )
    with atomic_path(out) as tmp:
        seg.save_as(tmp)
    return Path(out)


class DicomSegd(MapTransform):
    """After the label map is back on the input's grid: ``<output_dir>/<case>_seg.dcm`` (see the module)."""

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str | os.PathLike = ".",
        space: str = BTCV13,
        algorithm: tuple[str, str] = ("BTCV bundle", "0"),
    ):
        super().__init__(keys)
        self.output_dir, self.space, self.algorithm = Path(output_dir), space, tuple(algorithm)
        id_space(space)
        _highdicom()  # a missing highdicom fails when the config is parsed, not after the first case

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            source = str(getattr(pred, "meta", {}).get("filename_or_obj", ""))
            labels = (pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred))[0]
            write_dicom_seg(
                np.rint(labels).astype(np.int64),
                source,
                self.output_dir / f"{case_id(source)}_seg.dcm",
                self.space,
                self.algorithm,
            )
        return d
