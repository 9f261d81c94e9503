"""The inference switches of the 3D bundles (common.inference): autocast, stitching device, label inversion."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cases import BUNDLE_TINY
from conftest import BUNDLES
from test_geometry import random_checkpoint

from common.errors import InputError
from common.inference import (
    SlidingWindowInferer,
    autocast_call,
    autocast_dtype,
    flip_combinations,
    flip_tta,
    stitching_plan,
)
from common.inversion import invert_labels

BUNDLES_3D = ["unetr_btcv", "swin_unetr_btcv", "unet_btcv", "mednext_btcv"]


def test_switch_values_are_checked():
    assert autocast_dtype(None) is None and autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") == torch.bfloat16 and autocast_dtype("FP16") == torch.float16
    with pytest.raises(ValueError, match="autocast must be"):
        autocast_dtype("int8")
    assert invert_labels("labels") and not invert_labels("probabilities")
    with pytest.raises(ValueError, match="invert must be one of"):
        invert_labels("nearest")
    with pytest.raises(ValueError, match="stitch must be one of"):
        SlidingWindowInferer((8, 8, 8), stitch="gpu")


def test_stitching_plan_moves_large_outputs_to_the_cpu():
    from common.inference import stitching_need
    from common.inversion import GROUP_BYTES, SLAB_BYTES

    assert stitching_plan((100, 100, 100), 14, None) == "device"  # a CPU input
    need = stitching_need((100, 100, 100), 14)
    # the windows' output and count map, the softmax, the inversion's working memory and the label map it writes
    assert need == 29 * 100**3 * 4 + GROUP_BYTES + SLAB_BYTES + 13 * 100**3
    assert stitching_plan((100, 100, 100), 14, free_bytes=2 * need) == "device"
    assert stitching_plan((100, 100, 100), 14, free_bytes=need) == "cpu"  # only half the free memory may be used
    # the inversion to a thin-slice CT's own grid counts: the network's grid alone would fit in 8 GB
    thin = dict(spatial_shape=(266, 266, 300), out_channels=14, free_bytes=8 * 2**30)
    assert stitching_plan(**thin) == "device" and stitching_plan(**thin, original_voxels=512 * 512 * 600) == "cpu"


def test_free_gpu_memory_counts_what_pytorch_caches(monkeypatch):
    """PyTorch keeps the memory of a finished volume cached for the next: it is free to this process. Counting it as
    used sent every volume after a large one to the CPU."""
    from common.inference import cuda_free_bytes

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (1 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 9 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 1 * gib)
    assert cuda_free_bytes("cuda:1") == 9 * gib
    calls = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: calls.append(d) or (1 * gib, 80 * gib))
    cuda_free_bytes(0)
    assert calls == [torch.device("cuda", 0)]


@pytest.mark.parametrize("has_bf16", [True, False], ids=["bf16-cpu", "avx2-cpu"])
def test_reduced_precision_runs_only_where_the_cpu_has_it(has_bf16, monkeypatch, caplog):
    """``--autocast bf16`` on a CPU without bf16 instructions (where it runs several times slower than fp32) warns once
    and runs fp32: the 3D inferer and the 2D networks give exactly the fp32 outputs, the result files say so. With
    them, it runs bf16. A GPU is never second-guessed."""
    import logging

    import common.inference
    from common.inference import autocast_label, effective_autocast
    from common.slicewise import slicewise_network

    monkeypatch.setattr(common.inference, "cpu_reduced_precision", lambda: {"bf16": has_bf16, "fp16": False})
    monkeypatch.setattr(common.inference, "_FALLBACK_WARNED", set())
    assert effective_autocast("bf16", "cuda:0") == torch.bfloat16 and effective_autocast(None, "cpu") is None
    assert effective_autocast("fp16", "cpu") is None  # no fp16 instructions either
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)).eval()
    x = torch.rand(1, 1, 20, 18, 12)
    net2d = slicewise_network(torch.nn.Conv2d, roi_size=(16, 16), slice_batch=2, in_channels=1, out_channels=3,
                              kernel_size=3, padding=1).eval()  # fmt: skip
    caplog.set_level(logging.WARNING, logger="common.inference")
    with torch.no_grad():
        ref3d = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.5)(x, net)
        bf3d = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.5, autocast="bf16")(x, net)
        ref2d = net2d(x)
        net2d.slice_autocast = "bf16"
        bf2d = net2d(x)
    fallbacks = [r for r in caplog.records if "--autocast bf16" in r.getMessage()]
    if has_bf16:
        assert effective_autocast("bf16", "cpu") == torch.bfloat16 and autocast_label("bf16", "cpu") == "bf16"
        assert not torch.equal(ref3d, bf3d) and not torch.equal(ref2d, bf2d) and not fallbacks
    else:
        assert effective_autocast("bf16", "cpu") is None
        assert autocast_label("bf16", "cpu") == "bf16 requested, ran fp32 (no bf16 instructions on this CPU)"
        assert torch.equal(ref3d, bf3d) and torch.equal(ref2d, bf2d)
        assert len(fallbacks) == 1 and "no bf16 instructions" in fallbacks[0].getMessage()  # once per process


def _record_stitching(monkeypatch) -> list[tuple]:
    """Record (stitching device, buffer_steps) of every call MONAI's sliding-window inference receives."""
    import monai.inferers.inferer as monai_inferer

    calls: list[tuple] = []
    real = monai_inferer.sliding_window_inference

    def spy(*args, **kwargs):
        calls.append((args[10], args[14]))  # positional: device, buffer_steps (MONAI 1.6 SlidingWindowInferer)
        return real(*args, **kwargs)

    monkeypatch.setattr(monai_inferer, "sliding_window_inference", spy)
    return calls


def test_stitch_switch_decides_where_windows_are_stitched(monkeypatch):
    """``stitch="cpu"`` hands MONAI a CPU stitching device, ``"device"`` none (the input's); the numbers are equal."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)).eval()
    x = torch.rand(1, 1, 20, 18, 12)
    calls = _record_stitching(monkeypatch)
    with torch.no_grad():
        out = {
            s: SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.5, stitch=s)(x, net)
            for s in ("device", "cpu", "auto")
        }
    assert [str(c[0]) if c[0] is not None else None for c in calls] == [None, "cpu", None]  # auto: a CPU input stays
    assert torch.equal(out["device"], out["cpu"]) and torch.equal(out["device"], out["auto"])


def test_autocast_switch_reduces_the_network_only(bf16_cpu):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)).eval()
    seen: list[torch.dtype] = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.rand(1, 1, 20, 18, 12)
    with torch.no_grad():
        ref = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.5)(x, net)
        n = len(seen)
        bf16 = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.5, autocast="bf16")(x, net)
    assert set(seen[:n]) == {torch.float32} and set(seen[n:]) == {torch.bfloat16}
    assert bf16.dtype == torch.float32 and ref.shape == bf16.shape
    assert 0 < (bf16 - ref).abs().max() < 0.05  # reduced precision inside, float32 outside
    out = autocast_call(lambda t: (t * 2, {"a": t}), "bf16")(x)
    assert out[0].dtype == torch.float32 and out[1]["a"].dtype == torch.float32


def _bundle_inference(bundle, image, out, ckpt, monkeypatch, **switches) -> tuple[np.ndarray, dict]:
    """Run the bundle's inference.json on one image; return the labels and what the switches did: the dtype of the
    network's first convolution output, and the channel count of what was resampled back to the input's grid."""
    from monai.bundle import ConfigWorkflow

    import common.inversion

    seen: dict = {"conv_dtype": set(), "inverted_channels": set()}
    real_resample = common.inversion.slab_resample

    def resample_spy(img, *args, **kwargs):
        seen["inverted_channels"].add(int(img.shape[0]))
        return real_resample(img, *args, **kwargs)

    monkeypatch.setattr(common.inversion, "slab_resample", resample_spy)
    overrides = {
        **BUNDLE_TINY[bundle],
        "spacing": [4.5, 4.5, 7.0],
        **switches,
    }  # finer than the data: inversion resamples
    wf = ConfigWorkflow(
        config_file=str(BUNDLES / bundle / "configs" / "inference.json"),
        workflow_type="infer",
        dataset_dir=str(image),
        output_dir=str(out),
        ckpt_path=ckpt,
        **overrides,
    )
    wf.initialize()
    net = wf.parser.get_parsed_content("network")
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    conv.register_forward_hook(lambda m, i, o: seen["conv_dtype"].add(o.dtype))
    wf.run()
    wf.finalize()
    (pred,) = sorted(out.glob("*.nii.gz"))
    img, seg = nib.load(str(image)), nib.load(str(pred))
    assert seg.shape[:3] == img.shape and np.allclose(seg.affine, img.affine, atol=1e-4)
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) <= set(range(14))
    return labels, seen


@pytest.mark.parametrize("bundle", BUNDLES_3D)
def test_each_fast_switch_acts_alone_in_the_bundle(bundle, tiny_data, tmp_path, monkeypatch, bf16_cpu):
    """``--autocast bf16`` runs the network in bf16 and nothing else changes; ``--invert labels`` inverts the one-channel
    label map instead of the 14 probabilities. Each switch alone, each required to act, each close to the default."""
    ckpt = random_checkpoint(bundle, tmp_path / "w.pt")
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    default, d = _bundle_inference(bundle, image, tmp_path / "default", ckpt, monkeypatch)
    assert d == {"conv_dtype": {torch.float32}, "inverted_channels": {14}}
    bf16, a = _bundle_inference(bundle, image, tmp_path / "bf16", ckpt, monkeypatch, autocast="bf16")
    assert a == {"conv_dtype": {torch.bfloat16}, "inverted_channels": {14}}
    labels, i = _bundle_inference(bundle, image, tmp_path / "labels", ckpt, monkeypatch, invert="labels")
    assert i == {"conv_dtype": {torch.float32}, "inverted_channels": {1}}
    # a random network's near-ties flip under bf16, and the two inversion orders differ on label boundaries
    assert 0.8 < (default == bf16).mean() and 0.8 < (default == labels).mean() < 1.0


@pytest.mark.parametrize("bundle", BUNDLES_3D)
def test_tensorrt_overlay_parses_and_leaves_the_cpu_path_unchanged(bundle, tiny_data, tmp_path):
    """``configs/inference_trt.json`` wraps the network with MONAI's ``trt_compile`` (fp16 engines, dynamic batch
    up to ``sw_batch_size``). Without CUDA and TensorRT, ``trt_compile`` returns the network as it is: the overlay
    must then give exactly the labels of the plain inference. What it does on a GPU is not checked here."""
    from monai.bundle import ConfigWorkflow

    cfg = BUNDLES / bundle / "configs"
    ckpt = random_checkpoint(bundle, tmp_path / "w.pt")
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    labels = []
    for i, files in enumerate([[cfg / "inference.json"], [cfg / "inference.json", cfg / "inference_trt.json"]]):
        wf = ConfigWorkflow(
            config_file=[str(f) for f in files],
            workflow_type="infer",
            logging_file=False,
            dataset_dir=str(image),
            output_dir=str(tmp_path / f"out{i}"),
            ckpt_path=ckpt,
            **BUNDLE_TINY[bundle],
        )
        wf.initialize()
        if i:
            assert wf.parser.get_parsed_content("trt_args")["dynamic_batchsize"][2] == wf.parser["sw_batch_size"]
        wf.run()
        wf.finalize()
        labels.append(np.asarray(nib.load(str(tmp_path / f"out{i}" / "phantom0000_seg.nii.gz")).dataobj))
    assert len(np.unique(labels[0])) > 1 and np.array_equal(labels[0], labels[1])


def test_flip_combinations_follow_nnunet_order():
    assert flip_combinations(3) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert flip_combinations(2) == [(), (2,), (3,), (2, 3)]


class _Pointwise(torch.nn.Module):
    """A 1x1(x1) convolution: equivariant to every flip, so mirroring cannot change its prediction."""

    def __init__(self, dims: int):
        super().__init__()
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.conv = conv(1, 5, 1)
        torch.nn.init.normal_(self.conv.weight, std=3.0)

    def forward(self, x):
        return self.conv(x)


class _Ramp(_Pointwise):
    """Not flip-equivariant: adds a ramp along the last axis to class 1's score."""

    def forward(self, x):
        y = self.conv(x)
        ramp = torch.linspace(-2, 2, x.shape[-1], device=x.device)
        return torch.cat([y[:, :1], y[:, 1:2] + ramp, y[:, 2:]], 1)


@pytest.mark.parametrize("dims,passes", [(3, 8), (3, 4), (2, 4), (2, 2)])
def test_flip_tta_changes_nothing_for_a_flip_equivariant_network(dims, passes):
    torch.manual_seed(0)
    net = _Pointwise(dims).eval()
    x = torch.rand(2, 1, *([9, 7, 5][:dims]))
    with torch.no_grad():
        want = torch.softmax(net(x), 1)
        got = torch.softmax(flip_tta(net, x, passes), 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_flip_tta_averages_the_flipped_back_probabilities():
    torch.manual_seed(0)
    net = _Ramp(3).eval()
    x = torch.rand(1, 1, 6, 5, 8)
    with torch.no_grad():
        plain = torch.softmax(net(x), 1)
        flipped = torch.flip(torch.softmax(net(torch.flip(x, (2,))), 1), (2,))
        got = torch.softmax(flip_tta(net, x, 2), 1)
        last = torch.flip(torch.softmax(net(torch.flip(x, (4,))), 1), (4,))
        four = torch.softmax(flip_tta(net, x, 4), 1)
    torch.testing.assert_close(got, (plain + flipped) / 2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(torch.softmax(flip_tta(net, x, 1), 1), four, atol=1e-3), "the ramp must show"
    # the last-axis flip reverses the ramp: four passes differ from two
    assert not torch.allclose(four, got, atol=1e-3) and torch.isfinite(last).all()
    with pytest.raises(ValueError, match="at most 8"):
        flip_tta(net, x, 9)


def test_tta_through_the_3d_inferer_and_the_2d_network():
    """The sliding-window inferer mirrors every window, the slice-wise network every batch of slices: with a
    flip-equivariant stand-in the labels are those without TTA; a value out of range is refused."""
    torch.manual_seed(0)
    vol = torch.rand(1, 1, 20, 18, 12)
    net3 = _Pointwise(3).eval()
    with torch.no_grad():
        ref = SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.25, out_channels=5)(vol, net3)
        got = SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.25, out_channels=5, tta=8)(vol, net3)
    torch.testing.assert_close(torch.softmax(got, 1), torch.softmax(ref, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="tta"):
        SlidingWindowInferer(roi_size=(8, 8, 8), tta=9)

    from common.slicewise import slicewise_network

    with torch.no_grad():
        plain = slicewise_network(_Pointwise, roi_size=(16, 16), output="labels", dims=2)
        mirrored = slicewise_network(_Pointwise, roi_size=(16, 16), output="labels", dims=2, tta=4)
        mirrored.load_state_dict(plain.state_dict())
        assert torch.equal(plain(vol), mirrored(vol))
    with pytest.raises(ValueError, match="tta"):
        slicewise_network(_Pointwise, roi_size=(16, 16), dims=2, tta=8)


class _Conv(torch.nn.Module):
    """Two 3x3(x3) convolutions: a network whose output mixes neighbouring voxels, in 2D or 3D."""

    def __init__(self, dims: int = 3):
        super().__init__()
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.net = torch.nn.Sequential(conv(1, 8, 3, padding=1), torch.nn.GELU(), conv(8, 5, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def test_compile_switch_matches_eager_compiles_once_and_follows_new_weights():
    """``compile=True`` through the 3D inferer (5 windows in batches of 2: the last one partial) and the 2D slice-wise
    network (7 slices in batches of 3): the output equals the eager one to float rounding, and the padded last batch
    needs no second graph. After the weights change in place (a checkpoint loaded after the first call) the output
    follows the new weights, not the ones frozen into the first graph."""
    from torch._dynamo.utils import counters

    from common.slicewise import slicewise_network

    torch.compiler.reset()
    counters.clear()
    torch.manual_seed(0)
    vol = torch.rand(1, 1, 20, 16, 7)
    net = _Conv(3).eval()
    eager = SlidingWindowInferer(roi_size=(8, 16, 8), sw_batch_size=2, overlap=0.0, out_channels=5)
    fast = SlidingWindowInferer(roi_size=(8, 16, 8), sw_batch_size=2, overlap=0.0, out_channels=5, compile=True)
    with torch.no_grad():
        torch.testing.assert_close(fast(vol, net), eager(vol, net), rtol=1e-4, atol=1e-5)
        assert counters["stats"]["unique_graphs"] == 1
        before = eager(vol, net)
        net.load_state_dict({k: v * 0.5 for k, v in net.state_dict().items()})
        after = fast(vol, net)
        torch.testing.assert_close(after, eager(vol, net), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(after, before, atol=1e-3)

        plain = slicewise_network(_Conv, roi_size=(16, 16), slice_batch=3, channels_last=False, dims=2).eval()
        compiled = slicewise_network(
            _Conv, roi_size=(16, 16), slice_batch=3, channels_last=False, dims=2, compile="true"
        ).eval()
        compiled.load_state_dict(plain.state_dict())
        graphs = counters["stats"]["unique_graphs"]
        torch.testing.assert_close(compiled(vol), plain(vol), rtol=1e-4, atol=1e-5)
        assert counters["stats"]["unique_graphs"] == graphs + 1
    with pytest.raises(InputError, match="yes/no"):
        SlidingWindowInferer(roi_size=(8, 8, 8), compile="sometimes")


@pytest.mark.parametrize(
    "bundle", sorted(p.name for p in BUNDLES.iterdir() if (p / "configs/inference.json").is_file())
)
def test_every_bundle_has_the_compile_switch_off_by_default(bundle):
    """``--compile true`` reaches the forwards of every bundle: the 3D inferer or the 2D slice-wise network."""
    from common.bundle import bundle_parser

    for value, expected in ((None, False), ("true", True)):
        parser = bundle_parser(bundle, {**BUNDLE_TINY[bundle], **({} if value is None else {"compile": value})})
        inferer = parser.get_parsed_content("inferer")
        if isinstance(inferer, SlidingWindowInferer):
            assert inferer.compile is expected
        else:
            assert parser.get_parsed_content("network_def").slice_compile is expected


def _oblique_ct(folder, shape=(160, 144, 56), spacing=(1.1, 1.1, 2.5), degrees=20.0) -> str:
    """A generated CT whose affine turns the grid ``degrees`` in-plane (an oblique acquisition), stored LPS."""
    from common.phantom import make_phantom

    ph = make_phantom(seed=5, shape=shape, spacing=spacing)
    t = np.deg2rad(degrees)
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    path = str(folder / "oblique_ct.nii.gz")
    nib.save(nib.Nifti1Image(ph.image, turn @ ph.affine), path)
    return path


def _smooth_logits(shape, channels=14, seed=0) -> torch.Tensor:
    """Logits like a network's: smooth in space (random values on a coarse grid, interpolated), every class present."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, *[max(2, s // 6) for s in shape], generator=g)
    return torch.nn.functional.interpolate(coarse, size=tuple(shape), mode="trilinear")[0]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_slab_resampling_is_monais_resampling_bit_for_bit(mode, dtype, monkeypatch):
    """The resampling back to the input's spacing, slab by slab (a few planes at a time, odd counts included), gives
    every value and the affine of MONAI's whole-volume ``spatial_resample``, for an oblique grid."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing
    from monai.transforms.spatial.functional import spatial_resample

    import common.inversion as inv

    t = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ np.diag(
        [0.8, 0.8, 2.5]
    )
    affine[:3, 3] = [-90.0, 40.0, -30.0]
    net = Spacing(pixdim=(1.5, 1.5, 2.0))(MetaTensor(torch.zeros(1, 97, 83, 23), affine=torch.as_tensor(affine)))
    op = net.applied_operations[-1]
    src = MetaTensor(torch.softmax(_smooth_logits(net.shape[1:], 5), 0), meta=net.meta)
    args = (op["extra_info"]["src_affine"], op["orig_size"], mode, "border", False, dtype)
    whole = spatial_resample(src, *args, False, {"tracing": False})
    for planes in (1, 7, 97):
        monkeypatch.setattr(inv, "SLAB_BYTES", planes * 83 * 23 * dtype.itemsize * (7 + 5))
        out = torch.empty(whole.shape)
        seen = []
        meta = inv.slab_resample(src, *args, lambda a, b, v: (seen.append(b - a), out[:, a:b].copy_(v)))
        assert max(seen) == planes and sum(seen) == 97
        assert torch.equal(out, whole.as_tensor()) and torch.equal(meta.meta["affine"], whole.affine)


@pytest.mark.parametrize("invert", ["probabilities", "labels"])
def test_the_default_postprocessing_is_monais_inversion_in_less_memory(invert, tmp_path):
    """A 3D bundle's configured postprocessing (``InvertToLabelsd``: slabs, channel groups, running argmax) gives the
    label map of MONAI's ``Activationsd`` + ``Invertd`` + ``AsDiscreted`` voxel for voxel, affine included, on an
    oblique CT through the bundle's own preprocessing, in under half of MONAI's peak memory. Measured in a fresh
    process, as an inference runs: one that earlier tests have grown reuses its free memory, and the resident size
    of either path then stays flat."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys; sys.path.insert(0, sys.argv[3]); from test_inference import _compare_postprocessing; "
        "print(json.dumps(_compare_postprocessing(sys.argv[1], sys.argv[2])))"
    )
    tests = str(Path(__file__).parent)
    r = subprocess.run([sys.executable, "-c", code, invert, str(tmp_path), tests], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["shapes"] == [[1, 160, 144, 56]] * 2
    assert res["same_labels"] and res["same_affine"]
    assert res["labels_present"] >= 8  # a prediction with many organs, not a constant map
    if invert == "probabilities":
        assert res["channel_groups"] > 1
    peaks = res["peaks"]
    assert peaks["configured"] < 0.5 * peaks["monai"], peaks


def _compare_postprocessing(invert: str, folder: str) -> dict:
    """Both postprocessings on one oblique CT's logits, each under :class:`PeakMemory` (see the test above)."""
    from monai.data import MetaTensor
    from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd

    import common.inversion as inv
    from common.bundle import bundle_parser
    from common.tools.benchmark import PeakMemory

    parser = bundle_parser("unetr_btcv", {"spacing": [1.5, 1.5, 2.0], "invert": invert})
    pre = parser.get_parsed_content("preprocessing")
    configured = Compose(
        [t for t in parser.get_parsed_content("postprocessing").transforms if "Save" not in type(t).__name__]
    )
    image = pre({"image": _oblique_ct(Path(folder))})["image"]
    logits = _smooth_logits(image.shape[1:])
    if invert == "labels":
        monai = Compose([AsDiscreted("pred", argmax=True), Invertd("pred", pre, "image", nearest_interp=True)])
    else:
        monai = Compose(
            [
                Activationsd("pred", softmax=True),
                Invertd("pred", pre, "image", nearest_interp=False),
                AsDiscreted("pred", argmax=True),
            ]
        )
    # several slabs and channel groups, as a large CT gets them
    inv.SLAB_BYTES, inv.GROUP_BYTES = 6 * 2**20, 40 * 2**20
    peaks, outs = {}, {}
    for name, post in (("monai", monai), ("configured", configured)):
        item = {"image": image, "pred": MetaTensor(logits.clone(), meta=image.meta)}
        with PeakMemory() as mem:
            outs[name] = post(item)["pred"]
        peaks[name] = mem.peak_rss_mb - mem.start_rss_mb
        del item
    return {
        "shapes": [list(outs["monai"].shape), list(outs["configured"].shape)],
        "same_labels": torch.equal(outs["configured"].as_tensor(), outs["monai"].as_tensor()),
        "same_affine": torch.equal(outs["configured"].affine, outs["monai"].affine),
        "labels_present": len(torch.unique(outs["configured"])),
        "channel_groups": len(inv.channel_groups(14, image.shape[1:].numel())),
        "peaks": peaks,
    }
