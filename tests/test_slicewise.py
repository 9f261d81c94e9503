"""The slice-wise 2D-on-3D machinery: slice datasets, sampling, augmentation, batched vs reference inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import HU_PROBES, probe_volume
from monai.data import MetaTensor

from common import slicewise
from common.labels import organ
from common.slicewise import (
    PaperSliceAugmentd,
    SliceDataset,
    argmax_channels,
    bilinear_argmax,
    slice_preprocessing,
    slice_weights,
    slicewise_network,
    zoom_axial_slices,
)
from common.tools.per_slice import per_slice


class IntensityNet(torch.nn.Module):
    """A 'network' with no learning: class c wins where the locally averaged intensity is near c / (classes - 1).

    Like a trained network its output is spatially smooth (here a 5 x 5 mean at the network's size), which
    lets the batched and reference inference paths be compared on realistic structure without training.
    """

    def __init__(self, classes: int = 5, sharpness: float = 60.0, smooth: int = 5):
        super().__init__()
        self.centres = torch.linspace(0, 1, classes).view(1, classes, 1, 1)
        self.sharpness, self.smooth = sharpness, smooth
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        x = torch.nn.functional.avg_pool2d(
            x[:, :1], self.smooth, stride=1, padding=self.smooth // 2, count_include_pad=False
        )
        return -self.sharpness * (x - self.centres.to(x)) ** 2


@pytest.fixture(scope="module")
def volume(tiny_data):
    item = {
        "image": str(tiny_data / "imagesTr" / "phantom0000.nii.gz"),
        "label": str(tiny_data / "labelsTr" / "phantom0000.nii.gz"),
    }
    return item, slice_preprocessing()(item)


def test_preprocessing_is_ras_with_the_paper_window(tmp_path):
    """The 2D bundles' volume preprocessing: reoriented to RAS (no resampling) and every voxel windowed by the papers'
    [-125, 275] HU to (HU + 125) / 400 clipped to [0, 1], known HU values at known voxels included."""
    import nibabel as nib

    img_path, lab_path, hu, lab, aff, probes = probe_volume(tmp_path, spacing=(2.0, 2.0, 5.0))  # LPS, as most CT
    d = slice_preprocessing()({"image": img_path, "label": lab_path})
    img = d["image"]
    assert img.ndim == 4 and img.shape[0] == 1 and img.dtype == torch.float32
    # RAS: the arrays and affine nibabel's closest canonical orientation gives (x flipped, y flipped here)
    canon = nib.as_closest_canonical(nib.Nifti1Image(hu, aff))
    assert nib.aff2axcodes(img.affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(img.affine.numpy(), canon.affine, atol=1e-6)
    expected = np.clip((np.asarray(canon.dataobj).astype(np.float64) + 125.0) / 400.0, 0.0, 1.0)
    np.testing.assert_allclose(img[0].numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        d["label"][0].numpy(), np.asarray(nib.as_closest_canonical(nib.Nifti1Image(lab, aff)).dataobj)
    )
    # the probes, found through the affines
    to_out = np.linalg.inv(img.affine.numpy()) @ aff
    got = [float(img[0][tuple(np.rint(to_out @ [*p, 1.0])[:3].astype(int))]) for p in probes]
    want = [0.0, 0.0, 0.0, 125 / 400, 225 / 400, 375 / 400, 1.0, 1.0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"HU {HU_PROBES}")


def test_preprocessing_loads_the_file_type_and_windows_to_the_same_float_values(volume):
    """The 2D preprocessing loads int16 and lets the window convert: the same image as loading float32 first, and
    both are the papers' window, (HU + 125) / 400 clipped to [0, 1], of the file's voxels in RAS."""
    import nibabel as nib
    from monai.transforms import Compose, Orientationd, ScaleIntensityRanged

    from common.slicewise import PAPER_HU_WINDOW
    from common.transforms import load_transforms

    item, d = volume
    assert d["image"].dtype == torch.float32 and not d["label"].is_floating_point()
    raw = nib.as_closest_canonical(nib.load(item["image"]))
    assert raw.get_data_dtype() == np.int16
    hu = np.asarray(raw.dataobj).astype(np.float64)
    assert hu.min() < -125 and hu.max() > 275 and ((hu > -125) & (hu < 275)).mean() > 0.1  # both clips and the ramp
    np.testing.assert_allclose(d["image"][0].numpy(), np.clip((hu + 125.0) / 400.0, 0.0, 1.0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(d["image"].affine.numpy(), raw.affine, atol=1e-6)
    lo, hi = PAPER_HU_WINDOW
    as_float = Compose(
        load_transforms(("image", "label"))
        + [
            Orientationd(("image", "label"), axcodes="RAS", labels=None),
            ScaleIntensityRanged("image", a_min=float(lo), a_max=float(hi), b_min=0.0, b_max=1.0, clip=True),
        ]
    )(item)
    assert (
        as_float["label"].dtype == torch.float32
    )  # the reference really loaded float, so the comparison means something
    assert torch.equal(d["image"].as_tensor(), as_float["image"].as_tensor())
    assert torch.equal(d["label"].as_tensor().float(), as_float["label"].as_tensor())
    assert np.array_equal(d["image"].affine.numpy(), as_float["image"].affine.numpy())


def test_slice_dataset_item_i_is_slice_i_of_its_volume_and_is_cached(tiny_data):
    """Item ``i`` of two different volumes is exactly that volume's axial slice ``z`` (image: SciPy's cubic zoom of the
    preprocessed slice clipped to [0, 1]; label: SciPy's order-0 zoom), and each volume is preprocessed once, when the
    dataset is built, however often its slices are read."""
    from scipy import ndimage

    items = [
        {
            "image": str(tiny_data / "imagesTr" / f"phantom000{k}.nii.gz"),
            "label": str(tiny_data / "labelsTr" / f"phantom000{k}.nii.gz"),
        }
        for k in (0, 2)
    ]
    prep = slice_preprocessing()
    calls: list[str] = []

    def counting(item):
        calls.append(item["image"])
        return prep(item)

    size = (48, 40)
    ds = SliceDataset(items, counting, img_size=size, progress=False)
    assert calls == [it["image"] for it in items]
    vols = [prep(it) for it in items]
    zs = [v["image"].shape[-1] for v in vols]
    assert len(ds) == sum(zs)
    i = 0
    for v, vol in enumerate(vols):
        img, lab = np.asarray(vol["image"][0]), np.asarray(vol["label"][0])
        f = (size[0] / img.shape[0], size[1] / img.shape[1])
        for z in range(zs[v]):
            s = ds[i]
            assert type(s["image"]) is torch.Tensor and s["image"].shape == (1, *size) == s["label"].shape
            want = np.clip(ndimage.zoom(img[:, :, z], f, order=3), 0.0, 1.0)
            np.testing.assert_allclose(s["image"][0].numpy(), want, rtol=0, atol=2e-6, err_msg=f"volume {v} slice {z}")
            np.testing.assert_array_equal(
                s["label"][0].numpy(), ndimage.zoom(lab[:, :, z], f, order=0), err_msg=f"{v}/{z}"
            )
            i += 1
    assert torch.equal(ds[5]["image"], ds[5]["image"]) and calls == [it["image"] for it in items]  # read from the cache


def test_foreground_aware_weights():
    present = [np.array([0]), np.array([0]), np.array([0, 6]), np.array([0, 6, 12]), np.array([0])]
    uniform = slice_weights(present, 14, fg_prob=0.0)
    np.testing.assert_allclose(uniform, 0.2)
    w = slice_weights(present, 14, fg_prob=0.5)
    assert w.sum() == pytest.approx(1.0)
    # the only slice holding the small organ (12) gets the most weight, background-only slices the least
    assert w[3] == w.max() and w[0] == w.min()
    # P(draw a slice with organ 12) = 0.5 * (1 / 2 classes) + 0.5 * (1 / 5 slices)
    assert w[3] == pytest.approx(0.5 / 2 + 0.5 / 2 / 2 + 0.5 / 5)


def test_weighted_sampler_sees_small_organs_more_often(tiny_data):
    items = [
        {
            "image": str(tiny_data / "imagesTr" / f"phantom000{i}.nii.gz"),
            "label": str(tiny_data / "labelsTr" / f"phantom000{i}.nii.gz"),
        }
        for i in range(3)
    ]
    ds = SliceDataset(items, slice_preprocessing(), img_size=(32, 32), fg_prob=0.5, progress=False)
    adrenal = organ("adrenal_left").id
    has = np.array([adrenal in p for p in ds._present])
    assert 0 < has.sum() < len(ds)
    assert ds.weights[has].sum() > 1.5 * has.mean(), "foreground sampling must over-sample the small organ"
    idx = list(ds.sampler(num_samples=4000, generator=torch.Generator().manual_seed(0)))
    assert len(idx) == 4000 and np.mean(has[idx]) == pytest.approx(ds.weights[has].sum(), abs=0.03)


def test_paper_augmentation_moves_image_and_label_together():
    aug = PaperSliceAugmentd(("image", "label"))
    aug.set_random_state(seed=3)
    lab = torch.zeros(1, 40, 40)
    lab[0, 5:20, 8:30] = 1
    lab[0, 25:35, 2:9] = 2
    ops = set()
    for _ in range(40):
        out = aug({"image": lab.clone() / 2, "label": lab.clone()})
        assert out["image"].shape == (1, 40, 40)
        torch.testing.assert_close(out["image"] * 2, out["label"])  # same geometric op on both
        ops.add(aug._op)
    assert ops == {0, 1, 2}  # rot90+flip, small rotation and identity all occur


def net3d(roi, **kw):
    """The intensity 'network' as a 3D-volume model, the way the 2D bundles build theirs."""
    return slicewise_network(IntensityNet, roi_size=roi, **kw)


def test_slices_in_slices_out_volumes_in_volumes_out():
    net = net3d((16, 16))
    assert net(torch.rand(3, 1, 16, 16)).shape == (3, 5, 16, 16)  # training: the 2D network itself
    assert net(torch.rand(1, 1, 20, 24, 6)).shape == (1, 5, 20, 24, 6)
    assert set(net.state_dict()) == set(IntensityNet().state_dict())
    assert isinstance(net, IntensityNet)


def test_batched_equals_reference_without_resizing():
    """With slices already at the network size there is nothing to interpolate: both paths give the same labels."""
    torch.manual_seed(0)
    vol = torch.rand(1, 1, 32, 32, 7)
    b = net3d((32, 32), slice_batch=3)(vol)
    r = per_slice(net3d((32, 32)))(vol)
    assert b.shape == r.shape == (1, 5, 32, 32, 7)
    torch.testing.assert_close(b.argmax(1), r.argmax(1), rtol=0, atol=0)


def test_batched_and_reference_agree_on_a_phantom(volume):
    _, d = volume
    vol = d["image"].unsqueeze(0)  # (1, 1, X, Y, Z)
    b = net3d((48, 48), slice_batch=8)(vol).argmax(1)
    ref = per_slice(net3d((48, 48)))
    r = ref(vol).argmax(1)
    assert all(c == (1, 1, 48, 48) for c in ref.calls), "reference path: one slice at a time at the network size"
    agreement = (b == r).float().mean().item()
    assert agreement > 0.98, agreement


def test_batched_inference_slices_the_axial_axis_in_batches():
    vol = torch.rand(2, 1, 20, 24, 11)
    net = net3d((16, 16), slice_batch=4)
    out = net(vol)
    assert out.shape == (2, 5, 20, 24, 11)
    assert net.calls == [(4, 1, 16, 16), (4, 1, 16, 16), (3, 1, 16, 16)] * 2
    # each axial slice is processed independently: changing slice 5 changes only slice 5's output
    vol2 = vol.clone()
    vol2[..., 5] = 1 - vol2[..., 5]
    changed = (net(vol2) - out).abs().amax(dim=(0, 1, 2, 3))
    assert changed[5] > 0 and torch.count_nonzero(changed) == 1


def test_metatensor_in_metatensor_out_and_bf16_switch(bf16_cpu):
    vol = MetaTensor(torch.rand(1, 1, 16, 16, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    out = net3d((16, 16), autocast="bf16")(vol)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, vol.affine)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    labels = net3d((16, 16), output="labels", autocast="bf16")(vol)
    assert isinstance(labels, MetaTensor) and labels.shape == (1, 1, 16, 16, 4)
    torch.testing.assert_close(labels[:, 0], out.argmax(1).float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="autocast"):
        net3d((16, 16), autocast="int8")
    with pytest.raises(ImportError, match="cannot import the network class"):
        slicewise_network("common.networks.nope.Net")


@pytest.mark.parametrize("loop", [False, True], ids=["batched", "per-slice"])
def test_label_output_is_the_argmax_of_the_logits(volume, loop):
    """``output="labels"`` computes the argmax batch by batch: the same labels, one channel instead of all."""
    _, d = volume
    vol = d["image"].unsqueeze(0)
    wrap = per_slice if loop else (lambda net: net)
    logits = wrap(net3d((48, 48), slice_batch=5))(vol)
    labels = wrap(net3d((48, 48), slice_batch=5, output="labels"))(vol)
    assert labels.shape == (1, 1, *vol.shape[2:]) and labels.dtype == torch.float32
    assert len(torch.unique(labels)) > 2, "the phantom's organs must show up, or the comparison proves nothing"
    torch.testing.assert_close(labels[:, 0], logits.argmax(1).float(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_argmax_channels_matches_torch_argmax_ties_included(dtype, layout):
    y = torch.randint(0, 3, (2, 6, 9, 7)).to(dtype)  # many ties: the first maximum must win, as torch.argmax
    y = y.contiguous(memory_format=layout)
    torch.testing.assert_close(argmax_channels(y), y.argmax(1), rtol=0, atol=0)


def test_label_resize_reproduces_the_reference_path(volume):
    """``resize="labels"`` is the papers' order (cubic zoom, argmax at the network size, nearest zoom back) done
    in batches: the same labels as the per-slice reference; the default logit resizing differs only at some
    boundary voxels."""
    _, d = volume
    vol = d["image"].unsqueeze(0)
    assert vol.shape[2:4] != (48, 48)
    ref = per_slice(net3d((48, 48), output="labels"))(vol)
    lab = net3d((48, 48), slice_batch=4, output="labels", resize="labels")(vol)
    assert len(torch.unique(ref)) > 2
    torch.testing.assert_close(lab, ref, rtol=0, atol=0)
    logits_order = net3d((48, 48), slice_batch=4, output="labels")(vol)
    assert 0.95 < (logits_order == ref).float().mean().item() < 1.0
    with pytest.raises(ValueError, match="resize"):
        net3d((16, 16), resize="cubic")


@pytest.mark.parametrize(
    "shape, size",
    [((122, 101, 3), (224, 224)), ((512, 300, 2), (224, 224)), ((224, 224, 2), (60, 90)), ((40, 40, 2), (40, 40))],
)
def test_axial_zoom_is_scipys_zoom_of_each_slice(shape, size):
    """The batched path's input resizing is the papers' ``scipy.ndimage.zoom(order=3)`` of every axial slice and
    channel of a (C, X, Y, Z) volume, returned in slice order (Z, C, H, W) as float32, whatever the input type."""
    from scipy import ndimage

    x = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    got = zoom_axial_slices(torch.from_numpy(x), size)
    f = (size[0] / shape[0], size[1] / shape[1])
    want = np.stack([[ndimage.zoom(x[c, :, :, z], f, order=3) for c in range(2)] for z in range(shape[2])])
    assert got.shape == (shape[2], 2, *size) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-6)
    assert torch.equal(zoom_axial_slices(torch.from_numpy(x).double(), size), got)


@pytest.mark.parametrize("n_in,n_out", [(512, 224), (101, 224), (224, 512), (7, 224), (224, 3)])
def test_zoom_bands_hold_every_nonzero_of_the_matrix(n_in, n_out):
    """The banded products skip only exact zeros: the bands put back together are the zoom matrix."""
    from common.slicewise import cubic_zoom_bands, cubic_zoom_matrix

    m = cubic_zoom_matrix(n_in, n_out)
    rebuilt = np.zeros_like(m)
    for o0, o1, i0, i1, w in cubic_zoom_bands(n_in, n_out):
        rebuilt[o0:o1, i0:i1] = w
    np.testing.assert_array_equal(rebuilt, m)
    if min(n_in, n_out) >= 4 * slicewise.resize.ZOOM_BAND_ROWS:  # and they skip most of a large matrix
        assert sum(w.size for *_, w in cubic_zoom_bands(n_in, n_out)) < 0.5 * m.size


@pytest.mark.parametrize("dense_share", [0.0, 2.0], ids=["dense", "boundary-only"])
@pytest.mark.parametrize("size", [(100, 71), (37, 53), (20, 20), (1, 9), (9, 1), (512, 512)])
def test_bilinear_argmax_equals_resizing_the_scores(size, dense_share, monkeypatch):
    """Interpolating only the cells whose corners disagree gives the argmax of the fully resized scores; so does
    the fallback for fragmented predictions, which interpolates every channel."""
    monkeypatch.setattr(slicewise.resize, "DENSE_SHARE", dense_share)
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.randn(3, 6, 9, 11), size=(37, 53), mode="bilinear") * 4
    ties = torch.randint(0, 2, (2, 4, 37, 53)).float()
    for y in (torch.randn(3, 5, 37, 53), smooth, ties, smooth.bfloat16(), torch.randn(2, 5, 37, 53).half()):
        scores = torch.nn.functional.interpolate(y.float(), size=size, mode="bilinear", align_corners=True)
        expected = scores.argmax(1)
        got = bilinear_argmax(y, size)
        assert got.shape == expected.shape and got.dtype == torch.uint8
        # equal, but where two classes tie to float rounding (the two kernels add the four terms in another order)
        differ = got.long() != expected
        tie = (scores.gather(1, got.long()[:, None]) - scores.gather(1, expected[:, None])).abs()[:, 0] <= 1e-6
        assert not (differ & ~tie).any() and differ.float().mean() < 1e-5


class _TinyConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 5, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_channels_last_is_a_layout_not_a_change():
    """Channels-last weights: the same state dict and, to float rounding, the same outputs (2D and volumes)."""
    torch.manual_seed(0)
    cl = slicewise_network(_TinyConvNet, roi_size=(24, 24))
    plain = slicewise_network(_TinyConvNet, roi_size=(24, 24), channels_last=False)
    plain.load_state_dict(cl.state_dict())
    assert cl.b.weight.is_contiguous(memory_format=torch.channels_last) and not cl.b.weight.is_contiguous()
    assert plain.b.weight.is_contiguous() and not plain.b.weight.is_contiguous(memory_format=torch.channels_last)
    for x in (torch.rand(3, 1, 24, 24), torch.rand(1, 1, 30, 20, 5)):
        torch.testing.assert_close(cl(x), plain(x), rtol=1e-5, atol=1e-6)


def test_default_slice_batch_depends_on_the_device():
    from common.slicewise import default_slice_batch

    assert default_slice_batch("cpu") == default_slice_batch(None) == 2
    assert default_slice_batch("cuda:0") == 16


@pytest.mark.parametrize("bundle", ["transunet_btcv", "swin_unet_btcv", "mt_unet_btcv"])
def test_train_json_states_the_papers_augmentation_and_the_dataset_applies_it(bundle, tiny_data):
    """The 2D bundles' random slice augmentation is written in ``train.json`` (``train#augmentation``) and the
    slice dataset applies it to every draw: drawing one slice repeatedly gives rotated / flipped copies with image
    and label moved together; without it (``train#dataset#augment`` null) every draw is the cached slice."""
    from common.bundle import bundle_parser

    overrides = {"dataset_dir": str(tiny_data), "img_size": [32, 32]}
    parser = bundle_parser(bundle, overrides, config="train.json")
    assert parser["train"]["augmentation"]["transforms"][0]["_target_"] == "common.slicewise.PaperSliceAugmentd"
    ds = parser.get_parsed_content("train#dataset")
    ds.augment.set_random_state(0)
    i = max(range(len(ds)), key=lambda k: int((ds.labels[ds.index[k][0]][ds.index[k][1]] > 0).sum()))
    v, z = ds.index[i]
    cached_img, cached_lab = ds.images[v][z], ds.labels[v][z].float()
    draws = [ds[i] for _ in range(16)]
    assert any(not torch.equal(d["image"], cached_img) for d in draws), "no draw was augmented"
    ops = [lambda a, k=k, f=f: torch.flip(torch.rot90(a, k, (1, 2)), (1 + f,)) for k in range(4) for f in range(2)]
    matched = 0
    for d in draws:  # a rot90 + flip draw moved the label with the image
        for op in ops:
            if torch.equal(d["image"], op(cached_img)):
                assert torch.equal(d["label"], op(cached_lab))
                matched += 1
                break
    assert matched, "no rot90 / flip draw among 16"
    plain = bundle_parser(bundle, {**overrides, "train#dataset#augment": None}, config="train.json")
    ds0 = plain.get_parsed_content("train#dataset")
    assert all(torch.equal(ds0[i]["image"], cached_img) for _ in range(5))
