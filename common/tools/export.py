"""Export a bundle's network to TorchScript (through MONAI's ``ckpt_export``) or ONNX, checked against eager.

    python -m common.tools.export torchscript --bundle unetr_btcv [--ckpt models/model.pt] [--out models/model.ts]
    python -m common.tools.export onnx --bundle transunet_btcv [--ckpt ...] [--config overlay.json] [--out models/model.onnx]

TorchScript: MONAI's ``ckpt_export`` on the bundle's ``inference.json`` ``network_def``, scripted where
``torch.jit.script`` can compile the network (MONAI's ``UNETR``) and traced where it cannot (``SwinUNETR`` and
``DynUNet`` with this torch and MONAI, and the networks written here, which use einops and Python-level shape
logic); the report says which. ONNX: ``torch.onnx.export`` (the dynamo exporter, opset 18) with a dynamic batch
dimension, one self-contained file (every network here is far below ONNX's 2 GB limit for weights inside the
graph). ``--config`` takes overlays as ``monai.bundle run`` does (``configs/demo.json`` for the demo model), the
weights are checked before anything is written, and the output folder is created. Both are checked on a random
input against the eager network with the same weights, and the maximum absolute difference is printed and
returned; the export fails when it exceeds ``--tolerance`` (default 1e-4) times ``max(1, max |eager logit|)``,
i.e. an absolute 1e-4 for logits up to 1 and a relative 1e-4 beyond. The file is written under a temporary name
and takes its own only once it passed that check: a failed export leaves the previous file, or none.

The 2D bundles export their 2D network, ``(B, 1, H, W) -> (B, classes, H, W)``: the slice-wise volume logic of
``common.slicewise`` (batching, resizing, stacking) is Python around it, so a TorchScript/ONNX consumer
feeds axial slices resized to the network size. The 3D bundles export the patch network
``(B, 1, 96, 96, 96) -> (B, 14, 96, 96, 96)`` that sliding-window inference calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

from ..bundle import BUNDLES_DIR, bundle_configs, bundle_parser
from ..errors import InputError, command
from ..io import atomic_path
from ..weights import load_weights, with_overlay_hint
from ..workflow import network_args

__all__ = ["build_network", "example_input", "export_torchscript", "export_onnx", "main", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 1e-4


def build_network(bundle: str, ckpt: str | None = None, configs=(), overrides: dict | None = None):
    """The bundle's ``network_def`` (with ``overrides``), weights from ``ckpt`` if given, in eval mode."""
    parser = bundle_parser(bundle, overrides, extra=configs)
    net = parser.get_parsed_content("network_def")
    if ckpt:
        try:
            load_weights(net, ckpt, purpose="inference")
        except InputError as e:
            raise with_overlay_hint(e, ckpt, BUNDLES_DIR / bundle, configs, overrides, network_args(parser)) from None
    return net.eval(), parser


def example_input(net: torch.nn.Module, parser, batch: int = 1) -> torch.Tensor:
    """A random input of the exported network's shape (2D slices for the slice-wise bundles)."""
    torch.manual_seed(0)
    if hasattr(net, "slice_roi"):
        return torch.rand(batch, 1, *net.slice_roi)
    return torch.rand(batch, 1, *[int(r) for r in parser.get_parsed_content("roi_size")])


def _compare(exported: torch.Tensor, eager: torch.Tensor, tolerance: float, report: dict, what: str) -> dict:
    """Record the max abs difference and the logit scale; raise if beyond ``tolerance * max(1, scale)``."""
    report["max_abs_diff"] = float((exported.float() - eager.float()).abs().max())
    report["max_abs_logit"] = float(eager.float().abs().max())
    report["allowed"] = tolerance * max(1.0, report["max_abs_logit"])
    if not report["max_abs_diff"] <= report["allowed"]:
        raise RuntimeError(
            f"{what} output differs from eager by {report['max_abs_diff']:.3g} > {report['allowed']:.3g}: {report}"
        )
    return report


def _weight_bytes(net: torch.nn.Module) -> int:
    """About what an exported file takes: its weights (both formats hold them in the file)."""
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


def _scriptable(net: torch.nn.Module) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.script(net)
        return True
    except Exception:
        return False


def export_torchscript(
    bundle: str,
    out: str,
    ckpt: str,
    configs=(),
    overrides: dict | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    use_trace: bool | None = None,
) -> dict:
    """``ckpt_export`` the bundle's network to ``out`` and compare the TorchScript model with eager.

    The checkpoint is read once, by :func:`common.weights.load_weights` (any file the bundle's inference takes: the
    ``model.pt`` that ``train.json`` writes, with the weights under ``"model"`` beside the training record, an
    official layout, a DDP save, a file saved on a GPU); ``ckpt_export`` then reloads those weights from a plain
    state dict of CPU tensors, the one layout it reads."""
    from monai.bundle import ckpt_export

    net, parser = build_network(bundle, ckpt, configs, overrides)
    x = example_input(net, parser)
    if use_trace is None:
        use_trace = not _scriptable(net)
    kw = dict(overrides or {})
    report = {
        "format": "torchscript",
        "file": str(out),
        "method": "trace" if use_trace else "script",
        "input_shape": list(x.shape),
        "tolerance": tolerance,
    }
    # only a checked file takes the name; the plain state dict stands beside it, on the same disk, while it is made
    with atomic_path(out, 2 * _weight_bytes(net), "about") as tmp:
        plain = tmp.with_name(tmp.name + ".weights.pt")
        try:
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, plain)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ckpt_export(
                    net_id="network_def",
                    filepath=str(tmp),
                    ckpt_file=str(plain),
                    config_file=bundle_configs(bundle, extra=configs),
                    meta_file=str(BUNDLES_DIR / bundle / "configs" / "metadata.json"),
                    use_trace=use_trace,
                    input_shape=list(x.shape) if use_trace else None,
                    bundle_root=str(BUNDLES_DIR / bundle),
                    **kw,
                )
        finally:
            plain.unlink(missing_ok=True)
        ts = torch.jit.load(str(tmp), map_location="cpu").eval()
        with torch.no_grad():
            return _compare(ts(x), net(x), tolerance, report, "TorchScript")


def export_onnx(
    bundle: str,
    out: str,
    ckpt: str | None = None,
    configs=(),
    overrides: dict | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    check: bool = True,
) -> dict:
    """Export the bundle's network to ONNX (dynamic batch) and compare ONNX Runtime's output with eager."""
    net, parser = build_network(bundle, ckpt, configs, overrides)
    x = example_input(net, parser, batch=2)
    batch = torch.export.Dim("batch", min=1, max=1024)
    report = {"format": "onnx", "file": str(out), "input_shape": ["batch", *x.shape[1:]], "tolerance": tolerance}
    if check:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise InputError(
                "checking the ONNX file needs onnxruntime", hint="pip install onnxruntime, or pass --no-check"
            ) from e
    with atomic_path(out, _weight_bytes(net), "about") as tmp:  # only a checked file takes the name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (x,),
                str(tmp),
                dynamo=True,
                input_names=["image"],
                output_names=["pred"],
                dynamic_shapes=({0: batch},),
                opset_version=18,
                external_data=False,
            )
        if check:
            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            x3 = torch.cat([x, x[:1]])  # another batch size than the one exported with
            y = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x3.numpy()})[0])
            report["checked_batch"] = int(x3.shape[0])
            with torch.no_grad():
                _compare(y, net(x3), tolerance, report, "ONNX")
    return report


@command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.tools.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("format", choices=["torchscript", "onnx"])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--ckpt", default=None, help="weights (default: the bundle's models/model.pt)")
    ap.add_argument("--out", default=None, help="output file (default: the bundle's models/model.ts or model.onnx)")
    ap.add_argument("--config", action="append", default=[], help="extra config file merged after inference.json")
    ap.add_argument("--override", action="append", default=[], help="config override key=json")
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    args = ap.parse_args(argv)
    root = BUNDLES_DIR / args.bundle
    ckpt = args.ckpt or str(root / "models" / "model.pt")
    if not Path(ckpt).is_file():
        raise InputError(f"{ckpt}: no trained model found", hint="train the bundle or pass --ckpt")
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    out = args.out or str(root / "models" / ("model.ts" if args.format == "torchscript" else "model.onnx"))
    if args.format == "torchscript":
        report = export_torchscript(args.bundle, out, ckpt, args.config, overrides, args.tolerance)
    else:
        report = export_onnx(args.bundle, out, ckpt, args.config, overrides, args.tolerance)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
