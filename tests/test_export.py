"""TorchScript (MONAI ckpt_export) and ONNX export of every bundle's network, checked against eager.

The checks are the test's own: it builds the bundle's tiny network, gives it random weights, saves them to a
file, exports from that file, then loads the exported file (``torch.jit.load``, ONNX Runtime) and runs it on
a batch of 3, another batch size than the example the export used (TorchScript traces batch 1, ONNX exports
with batch 2), against the test's eager network. The 2D bundles export their 2D slice network,
``(B, 1, H, W) -> (B, classes, H, W)`` at the configured ``img_size``; the 3D bundles the patch network
``(B, 1, *roi_size) -> (B, classes, *roi_size)``.

Tolerance: the maximum absolute difference of the logits must be at most 1e-4 x max(1, max |logit|)
(common.tools.export.DEFAULT_TOLERANCE).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from bundle_cases import BUNDLE_NAMES, BUNDLE_TINY
from test_geometry import perturbed_network

import common.bundle
import common.tools.export
from common.tools.export import DEFAULT_TOLERANCE, export_onnx, export_torchscript

CHECK_BATCH = 3  # the export traces TorchScript with batch 1 and exports ONNX with batch 2


def reference_network(bundle: str, path) -> tuple[torch.nn.Module, torch.Tensor]:
    """The bundle's tiny network with random weights saved to ``path``, and a batch of 3 inputs it takes.

    The weights are perturbed (seeded) so the logits differ from the initialisation and between inputs.
    The network is kept in memory as the eager reference: it is never reloaded through the code under test.
    """
    g = torch.Generator().manual_seed(1234)
    net, parser = perturbed_network(bundle, g)
    torch.save(net.state_dict(), str(path))
    if hasattr(net, "slice_roi"):  # a 2D bundle: the exported network takes axial slices at img_size
        shape = [int(s) for s in parser.get_parsed_content("img_size")]
        assert len(shape) == 2, shape
    else:
        shape = [int(s) for s in parser.get_parsed_content("roi_size")]
        assert len(shape) == 3, shape
    x = torch.rand(CHECK_BATCH, 1, *shape, generator=g)
    return net.eval(), x


def assert_matches_eager(out: torch.Tensor, net: torch.nn.Module, x: torch.Tensor, what: str) -> None:
    with torch.no_grad():
        ref = net(x)
    assert tuple(out.shape) == (x.shape[0], 14, *x.shape[2:]) == tuple(ref.shape), (what, out.shape, ref.shape)
    # the reference is not degenerate: each input of the batch has its own prediction
    assert not torch.allclose(ref[0], ref[1], atol=1e-3) and not torch.allclose(ref[1], ref[2], atol=1e-3)
    diff = float((out.float() - ref.float()).abs().max())
    allowed = DEFAULT_TOLERANCE * max(1.0, float(ref.abs().max()))
    print(f"{what}: batch {x.shape[0]}, max |diff| {diff:.3g}, allowed {allowed:.3g}")
    assert diff <= allowed, f"{what} differs from eager by {diff:.3g} > {allowed:.3g}"


def run_torchscript(path, x: torch.Tensor) -> torch.Tensor:
    ts = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        return ts(x)


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert not isinstance(inp.shape[0], int), f"the ONNX batch dimension is fixed: {inp.shape}"
    assert list(inp.shape[1:]) == list(x.shape[1:]), inp.shape
    return torch.from_numpy(sess.run(None, {inp.name: x.numpy()})[0])


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_torchscript_export_matches_eager(bundle, tmp_path):
    net, x = reference_network(bundle, tmp_path / "model.pt")
    report = export_torchscript(
        bundle, str(tmp_path / "model.ts"), str(tmp_path / "model.pt"), overrides=BUNDLE_TINY[bundle]
    )
    print(bundle, report)
    assert report["input_shape"][1:] == list(x.shape[1:])  # 2D slices for the 2D bundles, the patch for 3D
    assert_matches_eager(
        run_torchscript(tmp_path / "model.ts", x), net, x, f"{bundle} TorchScript ({report['method']})"
    )
    # MONAI's exported file carries the bundle's metadata
    extra = {"metadata.json": ""}
    torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert b'"network_data_format"' in extra["metadata.json"]


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_onnx_export_matches_eager(bundle, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install -e '.[test]')")
    net, x = reference_network(bundle, tmp_path / "model.pt")
    report = export_onnx(
        bundle, str(tmp_path / "model.onnx"), str(tmp_path / "model.pt"), overrides=BUNDLE_TINY[bundle]
    )
    print(bundle, report)
    assert_matches_eager(run_onnx(tmp_path / "model.onnx", x), net, x, f"{bundle} ONNX")


# --- the command line: one bundle, a checkpoint written by the test, the bundle copied to a temporary folder so
# the default output (<bundle>/models/model.ts or .onnx) is not written into this repository

CLI_BUNDLE = "unet_btcv"  # the quickest to export both ways; its tiny override is a `$common.` expression


@pytest.fixture
def cli_bundle(tmp_path, monkeypatch):
    """(bundles folder, checkpoint outside it, reference network, input, --override arguments)."""
    bundles = tmp_path / "bundles"
    shutil.copytree(common.bundle.BUNDLES_DIR / CLI_BUNDLE / "configs", bundles / CLI_BUNDLE / "configs")
    monkeypatch.setattr(common.bundle, "BUNDLES_DIR", bundles)
    monkeypatch.setattr(common.tools.export, "BUNDLES_DIR", bundles)
    ckpt = tmp_path / "weights" / "trained.pt"
    ckpt.parent.mkdir()
    net, x = reference_network(CLI_BUNDLE, ckpt)
    overrides = [f"--override={k}={json.dumps(v)}" for k, v in BUNDLE_TINY[CLI_BUNDLE].items()]
    return bundles, ckpt, net, x, overrides


def _printed_report(stdout: str) -> dict:
    m = re.search(r"^\{$", stdout, re.M)
    assert m, stdout[-2000:]
    return json.loads(stdout[m.start() :])


def _check_cli(fmt, argv, expected_out, cli_bundle, capsys):
    _, _, net, x, overrides = cli_bundle
    rc = common.tools.export.main([fmt, "--bundle", CLI_BUNDLE, *argv, *overrides])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    report = _printed_report(captured.out)
    assert report["format"] == fmt and report["file"] == str(expected_out) and expected_out.is_file(), report
    run = run_torchscript if fmt == "torchscript" else run_onnx
    assert_matches_eager(run(expected_out, x), net, x, f"CLI {fmt}")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_cli_with_out(fmt, cli_bundle, tmp_path, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    _, ckpt, *_ = cli_bundle
    out = tmp_path / "new" / f"net.{'ts' if fmt == 'torchscript' else 'onnx'}"  # a folder that does not exist yet
    _check_cli(fmt, ["--ckpt", str(ckpt), "--out", str(out)], out, cli_bundle, capsys)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_cli_default_out_with_ckpt_outside_the_bundle(fmt, cli_bundle, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    bundles, ckpt, *_ = cli_bundle
    assert not (bundles / CLI_BUNDLE / "models").exists()
    expected = bundles / CLI_BUNDLE / "models" / ("model.ts" if fmt == "torchscript" else "model.onnx")
    _check_cli(fmt, ["--ckpt", str(ckpt)], expected, cli_bundle, capsys)


def test_export_cli_missing_checkpoint_is_a_clear_error(cli_bundle, tmp_path, capsys):
    bundles, *_ = cli_bundle
    assert common.tools.export.main(["onnx", "--bundle", CLI_BUNDLE]) == 1  # no --ckpt and no models/model.pt
    assert f"{bundles / CLI_BUNDLE / 'models' / 'model.pt'}: no trained model found" in capsys.readouterr().err
    assert common.tools.export.main(["torchscript", "--bundle", CLI_BUNDLE, "--ckpt", str(tmp_path / "nope.pt")]) == 1
    assert "nope.pt: no trained model found" in capsys.readouterr().err
    assert not (bundles / CLI_BUNDLE / "models").exists()


def test_export_names_the_overlay_a_demo_checkpoint_needs(cli_bundle, tmp_path, capsys):
    """A checkpoint of the reduced demo network, exported without configs/demo.json: one line naming the overlay, and
    nothing written; with --config demo.json it exports."""
    from common.bundle import bundle_parser

    bundles, *_ = cli_bundle
    demo = bundles / CLI_BUNDLE / "configs" / "demo.json"
    net = bundle_parser(CLI_BUNDLE, None, extra=[demo]).get_parsed_content("network_def")
    torch.save(net.state_dict(), tmp_path / "demo_model.pt")
    out = tmp_path / "x" / "model.ts"
    assert (
        common.tools.export.main(
            ["torchscript", "--bundle", CLI_BUNDLE, "--ckpt", str(tmp_path / "demo_model.pt"), "--out", str(out)]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "these weights are of the network that configs/demo.json builds" in err and "demo.json']" in err, err
    assert len(err.strip().splitlines()) == 2 and not out.exists()
    assert (
        common.tools.export.main(
            [
                "torchscript",
                "--bundle",
                CLI_BUNDLE,
                "--ckpt",
                str(tmp_path / "demo_model.pt"),
                "--out",
                str(out),
                "--config",
                str(demo),
            ]
        )
        == 0
    )
    assert out.is_file()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_export_failing_its_check_leaves_the_previous_file(fmt, cli_bundle, tmp_path, capsys):
    """An export whose output differs from eager beyond the tolerance (forced with a negative one) raises and
    keeps the previous file's bytes, with nothing else left in the folder: a consumer never picks up an
    unchecked file."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    _, ckpt, *_ = cli_bundle
    out = tmp_path / "exports" / f"net.{'ts' if fmt == 'torchscript' else 'onnx'}"
    out.parent.mkdir()
    out.write_bytes(b"the previous export")
    export = export_torchscript if fmt == "torchscript" else export_onnx
    with pytest.raises(RuntimeError, match="differs from eager"):
        export(CLI_BUNDLE, str(out), str(ckpt), overrides=BUNDLE_TINY[CLI_BUNDLE], tolerance=-1.0)
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert out.read_bytes() == b"the previous export"
