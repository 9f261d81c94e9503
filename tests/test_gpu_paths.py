"""The code that only a GPU runs for real, exercised on the CPU: the device each config makes current, cuDNN's
autotuning, the TensorRT engine files, the slice batch of a GPU. What runs on a GPU is the benchmark's
``--gpu-check``; these tests check the wiring that leads there, with the device given as a parameter."""

from __future__ import annotations

import json
import os

import pytest
import torch
from bundle_cases import BUNDLE_NAMES, BUNDLE_TINY
from conftest import BUNDLES
from monai.bundle import ConfigParser

BUNDLES_3D = ["unetr_btcv", "swin_unetr_btcv", "unet_btcv", "mednext_btcv"]


def _parser(bundle: str, *names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / n) for n in names])
    parser["bundle_root"] = str(BUNDLES / bundle)
    for k, v in overrides.items():
        parser[k] = v
    return parser


@pytest.fixture
def cuda_calls(monkeypatch):
    """``torch.cuda.set_device`` recorded instead of run, and cuDNN's flags restored after the test."""
    calls: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    return calls


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_every_run_makes_its_device_current_and_inference_autotunes(bundle, cuda_calls):
    """``--device cuda:1`` becomes the current CUDA device in every initialize list (what TensorRT and cuDNN allocate
    on); inference turns cuDNN's autotuning on (nothing in it is random); training stays deterministic unless told
    otherwise (``--deterministic false``)."""
    _parser(bundle, "inference.json", device="cuda:1").get_parsed_content("initialize")
    assert cuda_calls == [torch.device("cuda:1")]
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    _parser(bundle, "train.json", device="cuda:2").get_parsed_content("initialize")
    assert cuda_calls[-1] == torch.device("cuda:2")
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    _parser(bundle, "train.json", device="cuda:0", deterministic=False).get_parsed_content("initialize")
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    _parser(bundle, "inference.json", device="cpu").get_parsed_content("initialize")
    assert len(cuda_calls) == 3  # a CPU device leaves CUDA alone
    # multi-GPU training: after the process group (which sets cuda:LOCAL_RANK), the configured device
    init = json.loads((BUNDLES / bundle / "configs" / "multi_gpu_train.json").read_text())["initialize"]
    assert init.index("$common.distributed.init()") < init.index("$common.bundle.use_device(@device)")


def test_default_slice_batch_takes_any_device_spelling():
    from common.slicewise import default_slice_batch

    assert default_slice_batch(0) == default_slice_batch(1) == 16  # a bare index is a CUDA device
    assert default_slice_batch("cuda:1") == default_slice_batch(torch.device("cuda")) == 16
    assert default_slice_batch(None) == default_slice_batch("cpu") == 2


def test_the_2d_forwards_are_timed_only_when_asked():
    """Timing a forward on a GPU means waiting for it (``torch.cuda.synchronize``) after every slice batch: only the
    benchmark, which reads ``forward_seconds``, turns it on."""
    from common.slicewise import slicewise_network

    net = slicewise_network(torch.nn.Conv2d, roi_size=(8, 8), slice_batch=2, in_channels=1, out_channels=3,
                            kernel_size=1).eval()  # fmt: skip
    with torch.no_grad():
        net(torch.rand(1, 1, 8, 8, 6))
        assert net.forward_seconds == 0.0
        net.time_forwards = True
        net(torch.rand(1, 1, 8, 8, 6))
    assert net.forward_seconds > 0.0


def test_tensorrt_engines_are_per_device_and_tied_to_the_checkpoint():
    from common.inference import trt_plan_base

    assert trt_plan_base("/m/model.pt", "cuda:1") == "/m/model.pt.cuda1"
    assert trt_plan_base("/m/model.pt", 3) == "/m/model.pt.cuda3"
    assert trt_plan_base("/m/model.pt", "cpu") == "/m/model.pt.cpu"
    for bundle in BUNDLES_3D:
        network = json.loads((BUNDLES / bundle / "configs" / "inference_trt.json").read_text())["network"]
        assert network == "$common.inference.trt_network(@network_def, @ckpt_path, @device, @trt_args)"


class _FakeCompiler:
    """What ``trt_compile`` attaches to a network, reduced to the engine file: ``_build_and_save`` writes
    ``engine`` to ``plan_path`` (nothing when it is empty), or raises ``fail``."""

    def __init__(self, plan_path: str, engine: bytes = b"engine", fail: Exception | None = None):
        self.plan_path, self.engine, self.fail, self.builds, self.seen = plan_path, engine, fail, 0, []

    def _build_and_save(self, model, input_example):
        self.builds += 1
        self.seen.append((self.plan_path, os.path.exists(self.plan_path.replace(".partial", ""))))
        if self.fail:
            raise self.fail
        if self.engine:
            with open(self.plan_path, "wb") as f:
                f.write(self.engine)


@pytest.mark.parametrize("case", ["built", "failed", "empty", "there already"])
def test_tensorrt_engine_is_written_atomically_and_built_once(case, tmp_path, monkeypatch, cuda_calls):
    """The engine appears under its name only when complete (never half a file for another process to load), a
    failed or empty build leaves nothing, and a process that finds the engine built meanwhile does not build it
    again. The checkpoint's time stamp goes with the build arguments, so a newer checkpoint rebuilds."""
    import monai.networks

    import common.inference

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    seen: dict = {}

    def fake_trt_compile(model, base_path, args=None):
        seen.update(base=base_path, args=args)
        model._trt_compiler = _FakeCompiler(
            base_path + ".plan",
            engine=b"" if case == "empty" else b"engine",
            fail=RuntimeError("builder failed") if case == "failed" else None,
        )
        return model

    monkeypatch.setattr(monai.networks, "trt_compile", fake_trt_compile)
    net = common.inference.trt_network(torch.nn.Linear(2, 2), str(ckpt), "cpu", {"precision": "fp16"})
    plan = tmp_path / "model.pt.cpu.plan"
    assert seen["base"] == str(tmp_path / "model.pt.cpu")
    assert seen["args"] == {"precision": "fp16", "timestamp": int(os.path.getmtime(ckpt))}
    compiler = net._trt_compiler
    if case == "there already":
        plan.write_bytes(b"built by another process")
    if case in ("failed", "empty"):
        with pytest.raises(RuntimeError, match="builder failed" if case == "failed" else "built no engine"):
            compiler._build_and_save(net, {})
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["model.pt"]
        return
    compiler._build_and_save(net, {})
    if case == "there already":
        assert compiler.builds == 0 and plan.read_bytes() == b"built by another process"
        return
    (written_to, final_existed), = compiler.seen  # fmt: skip
    assert written_to != str(plan) and os.path.dirname(written_to) == str(tmp_path) and not final_existed
    assert plan.read_bytes() == b"engine" and compiler.plan_path == str(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.cpu.plan", "model.pt.cpu.plan.lock"]


@pytest.mark.parametrize("bundle", BUNDLES_3D)
def test_tensorrt_overlay_builds_the_network_on_the_configured_device(bundle, cuda_calls, monkeypatch):
    """``inference_trt.json``'s network on ``--device cuda:1``: the device is made current before ``trt_compile``
    builds anything, and the engine file is the one of that device."""
    import monai.networks

    seen: list = []

    def fake_trt_compile(model, base_path, args=None):
        seen.append((list(cuda_calls), base_path))
        return model

    monkeypatch.setattr(monai.networks, "trt_compile", fake_trt_compile)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # no CUDA here to move to
    parser = _parser(bundle, "inference.json", "inference_trt.json", **BUNDLE_TINY[bundle], device="cuda:1")
    parser["ckpt_path"] = "/models/model.pt"
    parser.get_parsed_content("network")
    assert seen == [([torch.device("cuda:1")], "/models/model.pt.cuda1")]
