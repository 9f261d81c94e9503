"""The benchmark suite's smoke mode: every part runs for every bundle on tiny inputs and tiny networks."""

from __future__ import annotations

import json

import pytest
from bundle_cases import BUNDLE_TINY
from test_geometry import random_checkpoint

from common.tools.benchmark import FIT_EPOCHS, main, suite, variants
from common.tools.benchmark.fitted import same_fit
from common.tools.benchmark.levers import lever_variants

TWO_D = ("transunet_btcv", "swin_unet_btcv", "mt_unet_btcv")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """``cpu_bf16(True/False)``: whether this CPU counts as one with bf16 instructions, for the runtime and the
    benchmark alike."""
    import common.inference
    import common.tools.benchmark.core

    def set_to(has: bool) -> None:
        found = lambda: {"bf16": has, "fp16": False}  # noqa: E731
        monkeypatch.setattr(common.inference, "cpu_reduced_precision", found)
        monkeypatch.setattr(common.tools.benchmark.core, "cpu_reduced_precision", found)

    return set_to


@pytest.fixture
def configs_default_to_cuda(monkeypatch):
    """Every bundle config's ``device`` defaults to ``cuda:0`` (as on a GPU machine): a part that builds anything on
    the config's device instead of the benchmark's ``--device`` fails here, where there is no CUDA."""
    import torch

    import common.bundle

    monkeypatch.setattr(common.bundle, "default_device", lambda: torch.device("cuda:0"))


# a 2D and a 3D bundle: the parts differ by kind only, and these two also cover the Swin attention switch (SwinUNETR)
# and the MT-UNet module part
SMOKE_BUNDLES = ["mt_unet_btcv", "swin_unetr_btcv"]


def test_suite_smoke_runs_every_part_for_a_2d_and_a_3d_bundle(tmp_path, cpu_bf16, configs_default_to_cuda):
    """Every part for a 2D and a 3D bundle on tiny inputs, on ``--device cpu`` while the configs default to CUDA.
    The CPU counts as one without bf16 instructions (the reduced-precision paths:
    test_reduced_precision_follows_the_cpu), so the run is as fast on any CPU."""
    from common.tools.benchmark.scaling import PATHS, SMOKE_SLICES

    cpu_bf16(False)
    ckpts = {b: random_checkpoint(b, tmp_path / f"{b}.pt") for b in SMOKE_BUNDLES}
    parts = ("efficiency", "inference", "agreement", "dataset", "fitted", "levers", "training", "scaling", "mtm")
    res = suite(
        SMOKE_BUNDLES,
        str(tmp_path / "bench"),
        ckpts,
        parts,
        train_iters=1,
        train_warmup=0,
        device="cpu",
        overrides=BUNDLE_TINY,
        smoke=True,
        compile=False,  # compiling takes seconds per network and path: test_compile_paths_are_timed_with_their_warm_up
    )
    md = (tmp_path / "bench" / "suite_smoke.md").read_text(encoding="utf-8")
    doc = json.loads((tmp_path / "bench" / "suite_smoke.json").read_text(encoding="utf-8"))
    assert doc["smoke"] and "figures meaningless" in md and "Written by the benchmark" in md
    with pytest.raises(ValueError, match="smoke"):  # meaningless figures never become the benchmark document
        suite(SMOKE_BUNDLES[:1], str(tmp_path / "bench2"), smoke=True, doc=str(tmp_path / "benchmarks.md"))
    assert not (tmp_path / "benchmarks.md").exists()
    # every bundle's speed-ups against the GPU targets, in the report
    assert {r["bundle"] for r in res["targets"]} == set(SMOKE_BUNDLES) and "## Targets (set for a GPU" in md
    assert all(r["met"] == (r["speedup"] >= r["target"]) for r in res["targets"])
    assert set(res["peak"]) == {"fp32"} and all(v["peak_gflops"] > 0 for v in res["peak"].values())
    assert "no bf16 instructions" in res["machine"]["left_out"] and "Left out: the bf16 paths" in md
    assert "## Forward efficiency against the machine's own peak" in md and "<!-- part: efficiency -->" in md
    for b in SMOKE_BUNDLES:
        eff = [r for r in res["efficiency"] if r["bundle"] == b]
        assert [r["precision"] for r in eff] == ["fp32"] and all(r["gflop"] > 0 for r in eff), eff
        assert all(
            r["share_of_peak"] == pytest.approx(r["gflops"] / res["peak"][r["precision"]]["peak_gflops"]) for r in eff
        )
        inf = [r for r in res["inference"] if r["bundle"] == b]
        kind = "2d" if "slice_resize" in inf[1]["switches"] else "3d"
        assert [r["variant"] for r in inf] == [
            v for v, _ in variants(kind, __import__("torch").device("cpu"), compile=False)
        ]
        assert not any("bf16" in r["variant"] for r in inf) and not any(r["amp"] for r in inf)
        assert inf[0]["speedup_vs_baseline"] == 1.0 and inf[0]["agreement_vs_baseline"] == 1.0
        geometry = inf[0]["prediction_geometry"]  # how fragmented the baseline's labels are
        assert isinstance(geometry["components"], int) and 0.0 <= geometry["boundary_share"] <= 1.0
        # the baseline computes the Swin window attention written out; bundles without the switch do not get it
        assert inf[0]["switches"].get("flash_attention", "absent") == (False if b.startswith("swin") else "absent")
        assert all("flash_attention" not in r["switches"] for r in inf[1:])
        for r in inf:
            assert set(r["stages_s"]) == {"load", "preprocess", "network", "postprocess", "write"}
            assert 0.0 <= r["agreement_vs_baseline"] <= 1.0
        # the fitted part trained the (tiny) demo network on one labelled phantom, then ran every path on it
        fit = [r for r in res["fitted"] if r["bundle"] == b]
        assert [r["variant"] for r in fit] == [r["variant"] for r in inf] and fit[0]["agreement_vs_baseline"] == 1.0
        assert (tmp_path / "bench" / "fitted" / b / "model.pt").is_file() and 0.0 <= fit[0][
            "baseline_dice_vs_labels"
        ] <= 1.0
        assert fit[0]["labels_geometry"]["components"] >= 1  # the phantom's labels hold organs
        assert all((r["machinery_share"] is None) == (b not in TWO_D) for r in inf)
        # the bundle's own evaluator on a folder of three volumes, in full and in reduced precision
        ds = [r for r in res["dataset"] if r["bundle"] == b]
        assert [r["variant"] for r in ds] == [
            r["variant"] for r in inf if r["switches"].get("slice_resize") != "labels"
        ][1:]
        assert all(r["volumes"] == 3 for r in ds)
        assert all((r["outside_forward_share"] is None) == (b not in TWO_D) for r in ds)
        tr = [r for r in res["training"] if r["bundle"] == b]
        assert len(tr) == 2
        sc = [r for r in res["scaling"] if r["bundle"] == b]
        assert res["mtm"] and res["mtm"][0]["max_abs_diff"] < 1e-4
        # memory and time against the number of slices: the default path, and the label inversion of the 3D bundles
        assert [(r["variant"], r["slices"]) for r in sc] == [(p, n) for p, _ in PATHS[kind] for n in SMOKE_SLICES]
        assert sc[0]["shape"][-1] < sc[2]["shape"][-1] and all(r["peak_rss_mb"] > 0 for r in sc)
        assert f"| {b} |" in md
        # where each forward's time goes: the FLOP operators and the rest, shares of the whole
        profile = eff[0]["profile"]
        assert profile[-1]["operator"].startswith("other operators") and profile[-1]["gflops"] is None
        assert {"aten::convolution", "aten::addmm", "aten::mm"} & {p["operator"] for p in profile[:-1]}, profile
        assert sum(p["share"] for p in profile) == pytest.approx(1.0, abs=0.02)
        # the accuracy levers on the bundle's (tiny, random) weights: every variant scored and timed
        lev = [r for r in res["levers"] if r["bundle"] == b]
        kind = "2d" if b in TWO_D else "3d"
        assert [r["variant"] for r in lev] == [v for v, _ in lever_variants(kind, "smoke")]
        assert all(0.0 <= r["mean_dice"] <= 1.0 and r["seconds"] > 0 for r in lev)
    ensemble = [r for r in res["levers"] if r["variant"].startswith("ensemble")]
    assert len(ensemble) == 1 and ensemble[0]["bundle"] == " + ".join(SMOKE_BUNDLES)
    assert "## Accuracy levers" in md and "## Where the fp32 forward's time goes" in md


def test_cli_parses_overrides_and_parts(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("common.tools.benchmark.cli.suite", lambda *a, **k: seen.update(args=a, kwargs=k) or {})
    assert (
        main(
            [
                "--bundle",
                "unetr_btcv",
                "--parts",
                "inference",
                "--override",
                "unetr_btcv:roi_size=[32,32,16]",
                "--ckpt",
                "unetr_btcv=/x.pt",
                "--smoke",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    bundles, out, ckpts, parts, _, _, _, _, overrides, smoke, volumes, paths, fit_epochs, doc, command = seen["args"]
    assert volumes == ("sample", "btcv") and paths is None and fit_epochs == FIT_EPOCHS and doc is None
    assert command.startswith("python -m common.tools.benchmark --bundle unetr_btcv --parts inference")
    assert bundles == ["unetr_btcv"] and parts == ("inference",) and smoke and seen["kwargs"]["compile"] is True
    assert overrides == {"unetr_btcv": {"roi_size": [32, 32, 16]}} and ckpts == {"unetr_btcv": "/x.pt"}
    assert main(["--gpu-check", "--out", str(tmp_path)]) == 0  # the GPU check's preset
    assert seen["args"][3] == ("inference", "learn", "ddp", "accelerators") and seen["args"][10] == ("btcv",)
    assert seen["kwargs"]["compile"] is False  # out of the inference part; the accelerators part times it once
    assert seen["args"][13].endswith("docs/benchmarks.md") and seen["kwargs"]["learn_iters"] == 100
    assert main(["--gpu-check", "--smoke", "--learn-iters", "5", "--out", str(tmp_path)]) == 0
    assert seen["args"][13] is None and seen["kwargs"]["learn_iters"] == 5  # a smoke run writes no document
    assert main(["--parts", "efficiency", "--no-compile", "--out", str(tmp_path)]) == 0
    assert seen["kwargs"]["compile"] is False
    assert main(["--parts", "fitted", "--fit-epochs", "80", "--out", str(tmp_path)]) == 0
    assert seen["args"][12] == 80
    assert main(["--parts", "inference", "--doc", str(tmp_path / "b.md"), "--out", str(tmp_path)]) == 0
    assert seen["args"][13] == str(tmp_path / "b.md")


def test_fitted_weights_are_reused_only_for_the_same_fit(tmp_path):
    # the fitted part keeps its weights beside fit.json and datalist.json; another epoch count, override or CT
    # must fit again rather than report figures of weights fitted otherwise
    item = {"image": "/data/ct.nii.gz", "label": "/data/label.nii.gz"}
    settings = {"max_epochs": 30, "val_interval": 30, "ckpt_path": str(tmp_path / "model.pt")}
    assert not same_fit(tmp_path, settings, item)  # nothing written yet
    (tmp_path / "fit.json").write_text(json.dumps(settings), encoding="utf-8")
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [item], "validation": [item]}), encoding="utf-8")
    assert same_fit(tmp_path, settings, item)
    assert not same_fit(tmp_path, {**settings, "max_epochs": 80}, item)
    assert not same_fit(tmp_path, {**settings, "slice_batch": 4}, item)
    assert not same_fit(tmp_path, settings, {**item, "image": "/data/other.nii.gz"})
    (tmp_path / "fit.json").write_text("{not json", encoding="utf-8")
    assert not same_fit(tmp_path, settings, item)


def test_the_document_keeps_each_parts_latest_run(tmp_path):
    """``merge_doc``: a run's sections replace the same parts of the document and leave the others; ``--render``
    writes the document from a saved run (a smoke run is refused)."""
    from common.tools.benchmark import merge_doc

    old = "# Benchmarks\n\nintro\n\n<!-- part: inference -->\nold inference\n<!-- end part -->\n<!-- part: mtm -->\nold mtm\n<!-- end part -->\n\nnotes\n"
    new = "# Benchmarks\n\nintro 2\n\n<!-- part: efficiency -->\nnew efficiency\n<!-- end part -->\n<!-- part: inference -->\nnew inference\n<!-- end part -->\n\nnotes 2\n"
    merged = merge_doc(old, new)
    assert merged.index("new efficiency") < merged.index("new inference") < merged.index("old mtm")
    assert (
        "old inference" not in merged and merged.startswith("# Benchmarks\n\nintro 2") and merged.endswith("notes 2\n")
    )
    assert merge_doc("", new) == new

    saved = {"smoke": True}
    (tmp_path / "s.json").write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["--render", str(tmp_path / "s.json"), "--doc", str(tmp_path / "b.md")])
    assert not (tmp_path / "b.md").exists()


@pytest.mark.parametrize("bundle", ["swin_unet_btcv"])  # a 3D compiled path: tests/test_inference.py
def test_compile_paths_are_timed_with_their_warm_up(bundle, tmp_path, cpu_bf16):
    """With compiling on, the efficiency part adds the fastest precision's forward through the bundles' ``compile``
    switch (with its compile time, no operator profile) and the inference part the fastest path compiled; the
    compile time is in the path's warm-up, reported beside its total. On a CPU without bf16 instructions (as here,
    whatever this CPU has), the fastest precision is fp32."""
    import torch

    cpu_bf16(False)
    ckpt = random_checkpoint(bundle, tmp_path / "w.pt")
    kind = "2d" if bundle == "swin_unet_btcv" else "3d"
    paths = variants(kind, torch.device("cpu"))
    res = suite(
        [bundle],
        str(tmp_path / "bench"),
        {bundle: ckpt},
        ("efficiency", "inference"),
        overrides={bundle: BUNDLE_TINY[bundle]},
        smoke=True,
        volumes=("btcv",),
        paths=(len(paths) - 1,),  # the baseline and the compiled path
    )
    eff = res["efficiency"]
    assert [r["precision"] for r in eff] == ["fp32", "fp32 + compile"]
    assert eff[1]["compile_s"] > 0 and eff[1]["profile"] is None and eff[0]["profile"]
    assert eff[1]["gflop"] == eff[0]["gflop"] and eff[1]["share_of_peak"] > 0
    name, switches = paths[-1]
    assert switches["compile"] is True and name == "batched + label resize + compile"
    inf = res["inference"]
    assert [r["variant"] for r in inf] == [paths[0][0], name]
    assert all(r["warm_up_s"] > 0 for r in inf) and inf[1]["agreement_vs_baseline"] > 0.5
    md = (tmp_path / "bench" / "suite_smoke.md").read_text(encoding="utf-8")
    assert "fp32 + compile" in md and "warm-up s" in md and "compile s" in md


def test_gpu_check_smoke_runs_on_the_cpu(tmp_path, cpu_bf16, configs_default_to_cuda, capsys):
    """``--gpu-check --smoke`` on the CPU, the configs defaulting to CUDA, ``--device cpu``: inference paths against
    their baseline, each recipe's training (with the gradient scaler wired), one DDP epoch over two gloo processes,
    the accelerators (TensorRT needs CUDA here; compiling is left out of a smoke run); no document written."""
    cpu_bf16(False)
    bundles = ["unetr_btcv", "transunet_btcv"]
    argv = ["--gpu-check", "--smoke", "--device", "cpu", "--out", str(tmp_path / "bench")]
    for b in bundles:
        argv += ["--bundle", b, "--ckpt", f"{b}={random_checkpoint(b, tmp_path / f'{b}.pt')}"]
        argv += [arg for k, v in BUNDLE_TINY[b].items() for arg in ("--override", f"{b}:{k}={json.dumps(v)}")]
    assert main(argv) == 0
    res = json.loads((tmp_path / "bench" / "suite_smoke.json").read_text(encoding="utf-8"))
    md = (tmp_path / "bench" / "suite_smoke.md").read_text(encoding="utf-8")
    assert res["machine"]["device"] == "cpu" and {r["bundle"] for r in res["inference"]} == set(bundles)
    assert {r["bundle"] for r in res["targets"]} == set(bundles)
    learned = {r["bundle"]: r for r in res["learn"]}
    assert set(learned) == set(bundles) and all(0.0 <= r["dice_training_case"] <= 1.0 for r in learned.values())
    assert all(r["iterations"] == 4 and r["first_loss"] > 0 for r in learned.values())
    assert [(r["bundle"], r["backend"], r["ok"]) for r in res["ddp"]] == [(b, "gloo", True) for b in bundles]
    accelerators = {(r["bundle"], r["accelerator"]): r.get("note", "") for r in res["accelerators"]}
    assert accelerators[("unetr_btcv", "TensorRT")] == "needs CUDA"
    assert accelerators[("transunet_btcv", "--compile true")] == "left out in a smoke run"
    for title in ("## Does each recipe learn?", "## Multi-GPU training", "## Accelerators", "## Targets"):
        assert title in md
    assert not (tmp_path / "docs").exists()


@pytest.mark.parametrize("has_bf16", [True, False], ids=["bf16-cpu", "avx2-cpu"])
def test_reduced_precision_follows_the_cpu(has_bf16, cpu_bf16, tmp_path):
    """The bf16 paths run where the CPU has bf16 instructions, and are left out with the reason where it has none;
    a GPU always times fp16."""
    import torch

    from common.tools.benchmark.core import machine_info, precisions

    cpu_bf16(has_bf16)
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    names = [n for n, _ in variants("3d", cpu)] + [n for n, _ in variants("2d", cpu)]
    assert any("bf16" in n for n in names) == has_bf16 and len(names) == len(set(names))
    assert [p for p, _ in precisions(cpu)] == (["fp32", "bf16"] if has_bf16 else ["fp32"])
    assert [p for p, _ in precisions(gpu)] == ["fp32", "fp16"] and "fp16" in " ".join(n for n, _ in variants("2d", gpu))
    info = machine_info(cpu)
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and info["cpu_bf16"] == has_bf16
    assert ("left_out" in info) != has_bf16
    b = "unetr_btcv"
    res = suite([b], str(tmp_path), {b: random_checkpoint(b, tmp_path / "w.pt")}, ("efficiency",),
                device="cpu", overrides={b: BUNDLE_TINY[b]}, smoke=True, compile=False)  # fmt: skip
    assert [r["precision"] for r in res["efficiency"]] == (["fp32", "bf16"] if has_bf16 else ["fp32"])


def test_training_step_wires_the_gradient_scaler(tmp_path):
    """With AMP on (the bundles' default where CUDA is), the benchmark's training step scales the loss through a
    gradient scaler, as MONAI's trainer does; on the CPU the scaler works on fp32 gradients, so the wiring runs."""
    import torch

    from common.phantom import write_phantom_dataset
    from common.tools.benchmark.core import Bundle, TrainingStep, batches

    data = write_phantom_dataset(tmp_path, num_cases=2, num_validation=1, seed=3, shape=(48, 48, 20),
                                 spacing=(6.0, 6.0, 10.0))  # fmt: skip
    items = json.loads(data.read_text())["training"]
    b = Bundle("unetr_btcv", None, torch.device("cpu"), {**BUNDLE_TINY["unetr_btcv"], "amp": True})
    step = TrainingStep(b, [{k: str(data.parent / v) for k, v in it.items()} for it in items])
    assert step.amp and step.scaler.is_enabled()
    scale = step.scaler.get_scale()
    losses = [step(batch) for batch, _ in zip(batches(step.parser.get_parsed_content("train#dataloader")), range(2))]
    assert all(loss > 0 for loss in losses) and step.scaler.get_scale() <= scale
