"""``--output_format dicom_seg``: a DICOM series in, a DICOM Segmentation out (highdicom), checked by reading the
SEG back: segment labels and SNOMED CT codes, frames on the source slices, the mask equal to the NIfTI output."""

from __future__ import annotations

import random

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from bundle_cases import BUNDLE_TINY
from conftest import BUNDLES
from monai.bundle import ConfigWorkflow

from common.dicom_seg import SNOMED
from common.labels import organ

# the tiny 3D settings without the UNETR's own size: the network is the stand-in below
TINY = {k: v for k, v in BUNDLE_TINY["unetr_btcv"].items() if not k.startswith("network_def#")}


class ThresholdNet(torch.nn.Module):
    """A stand-in 3D network whose labels follow the windowed intensity x in [0, 1]: background below 0.35, liver
    up to 0.7, aorta above. The CT's anatomy is not symmetric, so a flipped or shifted SEG cannot match."""

    def forward(self, x):
        scores = torch.full((x.shape[0], 14, *x.shape[2:]), -10.0, dtype=x.dtype, device=x.device)
        scores[:, 0] = 0.35
        scores[:, organ("liver").id] = x[:, 0]
        scores[:, organ("aorta").id] = 3 * x[:, 0] - 1.4
        return scores


def write_series(image_nii, folder):
    """The CT as a DICOM series written with pydicom: axial slices in LPS, files named in shuffled order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    img = nib.load(str(image_nii))
    arr = np.asarray(img.dataobj).astype(np.int16)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir()
    names = [f"IM{n:04d}.dcm" for n in random.Random(0).sample(range(1000), arr.shape[2])]
    uids = {}
    for k in range(arr.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "BTCV-TEST", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20260101",
            "120000",
            "1",
            "",
            "",
        )
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "test", 3, k + 1
        ds.PositionReferenceIndicator, ds.ImageType = "", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [float(v) for v in (*(lps[:3, 0] / spacing[0]), *(lps[:3, 1] / spacing[1]))]
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing, ds.SliceThickness = [float(spacing[1]), float(spacing[0])], float(spacing[2])
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(arr[:, :, k].T).tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
        uids[ds.SOPInstanceUID] = tuple(ds.ImagePositionPatient)
    return series, uids


def test_a_dicom_series_gives_a_dicom_seg_matching_the_nifti_labels(sample_ct, tmp_path):
    series_dir = tmp_path / "ct_series"
    series_uid, source_positions = write_series(sample_ct / "image.nii.gz", series_dir)
    out = tmp_path / "out"
    wf = ConfigWorkflow(
        config_file=str(BUNDLES / "unetr_btcv" / "configs" / "inference.json"),
        workflow_type="infer",
        logging_file=False,
        dataset_dir=str(series_dir),
        output_dir=str(out),
        output_format="dicom_seg",
        load_pretrain=False,
        network_def=ThresholdNet(),
        **TINY,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    (nifti,) = out.glob("*.nii.gz")
    seg_ds = pydicom.dcmread(out / "ct_series_seg.dcm")
    seg = hd.seg.Segmentation.from_dataset(seg_ds)

    # references the source series; frames sit on source slices and name them
    assert seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert seg_ds.FrameOfReferenceUID == pydicom.dcmread(next(series_dir.iterdir())).FrameOfReferenceUID
    for f in seg_ds.PerFrameFunctionalGroupsSequence:
        uid = f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ipp = tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient)
        assert np.allclose(ipp, source_positions[uid], atol=1e-3)

    # one segment per organ present, labelled and coded
    number_to_id = {}
    for d in seg_ds.SegmentSequence:
        o = next(o for o in (organ("liver"), organ("aorta")) if o.name == d.SegmentLabel)
        assert (
            d.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            d.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
        ) == (SNOMED[o.key][0], "SCT")
        assert d.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # anatomical structure
        number_to_id[int(d.SegmentNumber)] = o.id
    assert sorted(number_to_id.values()) == [organ("liver").id, organ("aorta").id]

    # the mask, slice by source slice, equals the NIfTI labels brought onto the series' grid by SimpleITK
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(series_dir))
    reader.SetFileNames(files)
    ref = reader.Execute()
    expected = sitk.GetArrayFromImage(
        sitk.Resample(sitk.ReadImage(str(nifti)), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )  # (slice, row, column) in the order of `files`
    order = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=order, combine_segments=True, assert_missing_frames_are_empty=True
    )
    lut = np.zeros(max(number_to_id) + 1, dtype=np.int64)
    for n, i in number_to_id.items():
        lut[n] = i
    assert got.shape == expected.shape
    assert np.array_equal(lut[got], expected)
    assert 0.05 < (expected == organ("liver").id).mean() < 0.6 and (expected == organ("aorta").id).any()


def test_dicom_seg_of_a_nifti_input_or_an_unknown_format_is_one_clear_message(tiny_data, tmp_path):
    from common.errors import find_input_error

    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    for fmt, words in (("dicom_seg", "needs a DICOM series as input"), ("dicomseg", "is not one of nifti, dicom_seg")):
        with pytest.raises(Exception) as exc:
            wf = ConfigWorkflow(
                config_file=str(BUNDLES / "unetr_btcv" / "configs" / "inference.json"),
                workflow_type="infer",
                logging_file=False,
                dataset_dir=str(image),
                output_dir=str(tmp_path / fmt),
                output_format=fmt,
                load_pretrain=False,
                network_def=ThresholdNet(),
                **TINY,
            )
            wf.initialize()
            wf.run()
        assert words in str(find_input_error(exc.value)), exc.value
