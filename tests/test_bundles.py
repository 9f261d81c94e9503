"""Every bundle end to end on tiny data: train (and resume), infer, evaluate, metadata, net in/out.

This is what the model zoo's CI runs for a bundle, with tiny network overrides so it takes seconds.
"""

from __future__ import annotations

import json
import os
import re

import nibabel as nib
import numpy as np
import pytest
from bundle_cases import BUNDLE_NAMES, BUNDLE_TINY, constant_label_network
from conftest import BUNDLES
from monai.bundle import ConfigWorkflow


def configs(bundle: str, *names: str) -> list[str]:
    return [str(BUNDLES / bundle / "configs" / n) for n in names]


def run_workflow(bundle: str, names: tuple[str, ...], workflow_type: str, **overrides) -> ConfigWorkflow:
    files = configs(bundle, *names)
    wf = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type=workflow_type, **overrides)
    wf.initialize()
    assert wf.check_properties() == [], f"{bundle}: missing bundle properties"
    wf.run()
    wf.finalize()
    return wf


def test_every_bundle_is_covered():
    present = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir())
    assert present == BUNDLE_NAMES


@pytest.fixture(scope="module", params=BUNDLE_NAMES)
def trained(request, tiny_data, tmp_path_factory):
    """Train each bundle for one tiny epoch (validation included); returns (bundle, workdir, overrides)."""
    bundle = request.param
    work = tmp_path_factory.mktemp(f"{bundle}-work")
    tiny = dict(BUNDLE_TINY[bundle])
    wf = run_workflow(
        bundle,
        ("train.json",),
        "train",
        dataset_dir=str(tiny_data),
        ckpt_dir=str(work / "models"),
        output_dir=str(work / "runs"),
        max_epochs=1,
        val_interval=1,
        **tiny,
    )
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 1
    return bundle, work, tiny


def test_train_saves_best_and_resumable_state(trained):
    import torch

    from common.bundle import bundle_parser
    from common.workflow import network_args

    bundle, work, tiny = trained
    assert (work / "models" / "model.pt").is_file(), "best checkpoint by validation Dice not written"
    saved = torch.load(work / "models" / "model.pt", weights_only=True)
    meta = json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    record = saved["bundle"]  # the checkpoint knows its network: bundle, version and the resolved network_def
    assert record["bundle"] == meta["name"] and record["version"] == meta["version"]
    assert record["network_def"] == network_args(bundle_parser(bundle, tiny, "train.json"))
    assert (work / "models" / "checkpoint_epoch=1.pt").is_file(), "resumable training state not written"
    assert any((work / "runs").iterdir()), "no TensorBoard log"


def _equal_states(a, b) -> bool:
    """Nested state dicts (tensors, numbers, lists, dicts) equal value for value."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(_equal_states(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal_states(x, y) for x, y in zip(a, b))
    return a == b


def test_training_resumes_after_interruption(trained, tiny_data, capsys):
    """Resumed, not restarted: the second call runs one epoch only, and its first iteration starts from exactly the
    model, optimizer and iteration count saved after epoch 1."""
    import copy

    import torch
    from ignite.engine import Events

    bundle, work, tiny = trained
    saved = torch.load(work / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    wf = ConfigWorkflow(
        config_file=configs(bundle, "train.json")[0],
        workflow_type="train",
        dataset_dir=str(tiny_data),
        ckpt_dir=str(work / "models"),
        output_dir=str(work / "runs"),
        max_epochs=2,
        val_interval=1,
        **tiny,
    )
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen: dict = {"epochs": 0}

    @trainer.on(Events.ITERATION_STARTED(once=saved["trainer"]["iteration"] + 1))
    def _at_first_step(engine):
        seen["model"] = {k: v.detach().clone() for k, v in wf.parser.get_parsed_content("network").state_dict().items()}
        seen["optimizer"] = copy.deepcopy(wf.parser.get_parsed_content("optimizer").state_dict())  # live tensors
        seen["epoch"] = engine.state.epoch

    @trainer.on(Events.EPOCH_COMPLETED)
    def _count(engine):
        seen["epochs"] += 1

    wf.run()
    wf.finalize()
    assert "resuming training from" in capsys.readouterr().out
    assert trainer.state.epoch == 2 and seen["epochs"] == 1, "the second call must run epoch 2 only"
    assert seen.get("epoch") == 2, "the first step of the second call is not the step after the saved iteration"
    assert _equal_states(seen["model"], saved["model"]), "the model did not start from the saved state"
    assert _equal_states(seen["optimizer"], saved["optimizer"]), "the optimizer did not start from the saved state"
    assert (work / "models" / "checkpoint_epoch=2.pt").is_file()
    assert not (work / "models" / "checkpoint_epoch=1.pt").exists()


def test_the_trained_checkpoint_exports_as_the_readme_says(trained, tmp_path, capsys):
    """``models/model.pt`` as ``train.json`` writes it (the weights under ``"model"``, beside the training record)
    exports to TorchScript with the README's command, and the same file as a GPU training saves it (its storages on
    ``cuda:0``) exports to ONNX; each export checked against the eager network."""
    import torch
    from bundle_cases import saved_on_cuda

    from common.tools.export import main

    bundle, work, tiny = trained
    ckpt = work / "models" / "model.pt"
    assert set(torch.load(ckpt, map_location="cpu", weights_only=True)) == {"model", "bundle"}
    on_gpu = saved_on_cuda(ckpt, tmp_path / "model_gpu.pt")
    with pytest.raises(RuntimeError, match="CUDA"):  # what a GPU user's file does to a loader that does not map it
        torch.load(on_gpu, weights_only=True)
    overlay = tmp_path / "tiny.json"
    overlay.write_text(json.dumps(tiny), encoding="utf-8")
    for fmt, weights, out in (("torchscript", ckpt, tmp_path / "model.ts"), ("onnx", on_gpu, tmp_path / "model.onnx")):
        argv = [fmt, "--bundle", bundle, "--ckpt", str(weights), "--config", str(overlay), "--out", str(out)]
        assert main(argv) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        report = json.loads(printed[printed.index("{") :])
        assert out.is_file() and report["file"] == str(out) and report["max_abs_diff"] <= report["allowed"]


def test_inference_writes_labels_on_the_input_grid(trained, tiny_data, tmp_path):
    bundle, work, tiny = trained
    image = tiny_data / "imagesTr" / "phantom0003.nii.gz"
    out = tmp_path / "pred"
    run_workflow(
        bundle,
        ("inference.json",),
        "infer",
        dataset_dir=str(image),
        output_dir=str(out),
        ckpt_path=str(work / "models" / "model.pt"),
        **tiny,
    )
    written = out / "phantom0003_seg.nii.gz"
    assert written.is_file()
    src, pred = nib.load(str(image)), nib.load(str(written))
    assert pred.shape == src.shape
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-4)
    values = np.unique(np.asarray(pred.dataobj))
    assert values.min() >= 0 and values.max() < 14
    assert not list(out.glob(".*partial*")), "temporary files left behind"


def test_evaluate_writes_per_organ_report(trained, tiny_data, tmp_path, capsys):
    bundle, work, tiny = trained
    out = tmp_path / "eval"
    run_workflow(
        bundle,
        ("inference.json", "evaluate.json"),
        "infer",
        dataset_dir=str(tiny_data),
        output_dir=str(out),
        ckpt_path=str(work / "models" / "model.pt"),
        overlays=1,
        **tiny,
    )
    from PIL import Image

    with Image.open(out / "overlays" / "phantom0003.png") as im:  # the picture the demo prints: CT | GT | prediction
        assert im.size[0] == 3 * 160 and np.asarray(im).std() > 10
    for name in ("metrics_per_case.csv", "summary.csv", "summary.md", "results.json"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    meta = res["meta"]
    assert meta["protocol"] == "btcv13" and meta["split"] == f"datalist in {tiny_data}" and meta["bundle_version"]
    assert (
        meta["bundle"]
        == json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))["name"]
    )
    from common.io import file_sha256

    assert meta["checkpoint_sha256"] == file_sha256(work / "models" / "model.pt")
    assert set(meta["versions"]) == {"monai", "torch", "numpy"} and meta["inference"]
    assert "absent" in res["rule"] and meta["nsd_tolerance_mm"] == 2.0
    header = (out / "metrics_per_case.csv").read_text(encoding="utf-8").splitlines()
    assert header[0].startswith("# bundle: ") and any(h.startswith("# checkpoint_sha256: ") for h in header)
    assert "liver_nsd" in next(h for h in header if h.startswith("case,"))
    assert len(res["cases"]) == 1
    assert set(res["summary"]["organs"]) >= {"liver", "spleen", "aorta"}
    printed = capsys.readouterr().out
    assert "MEAN" in printed and "liver" in printed and str(out) in printed
    assert f"picture (CT | ground truth | prediction): {out / 'overlays' / 'phantom0003.png'}" in printed


def test_missing_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    bundle = BUNDLE_NAMES[0]
    from common.errors import InputError, find_input_error

    with pytest.raises(Exception) as exc:
        run_workflow(
            bundle,
            ("inference.json",),
            "infer",
            dataset_dir=str(tiny_data / "imagesTr"),
            output_dir=str(tmp_path),
            ckpt_path=str(tmp_path / "none.pt"),
            **BUNDLE_TINY[bundle],
        )
    err = find_input_error(exc.value)
    assert isinstance(err, InputError)
    assert "no trained model" in str(err) and "train.json" in str(err)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_metadata_verifies(bundle, schema_file):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(BUNDLES / bundle / "configs" / "metadata.json"), filepath=str(schema_file))


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_metadata_channel_def_comes_from_labels(bundle):
    from common.labels import channel_def

    meta = json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    pred = meta["network_data_format"]["outputs"]["pred"]
    protocol = "synapse8" if len(pred["channel_def"]) == 9 else "btcv13"
    assert pred["channel_def"] == channel_def(protocol)
    assert meta["version"] in meta["changelog"]


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_verify_net_in_out(bundle):
    """MONAI's own check: the network takes ``inputs#image`` and returns ``outputs#pred`` as declared (on the
    declared input shape; the network's widths and depths reduced, which change neither)."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(BUNDLES / bundle / "configs" / "metadata.json"),
        config_file=str(BUNDLES / bundle / "configs" / "inference.json"),
        device="cpu",
        any=8,  # "*" dimensions (the 2D bundles take whole volumes of any size) get 8 voxels
        **{k: v for k, v in BUNDLE_TINY[bundle].items() if k.startswith("network_def#")},
    )


@pytest.mark.parametrize("bundle", ["swin_unet_btcv", "swin_unetr_btcv"])
@pytest.mark.parametrize("config", ["inference.json", "train.json"])
def test_flash_attention_switch_reaches_every_window_attention(bundle, config):
    from monai.networks.nets.swin_unetr import WindowAttention

    from common.bundle import bundle_parser

    for value in (True, False):
        overrides = dict(BUNDLE_TINY[bundle])
        if not value:
            overrides["flash_attention"] = False
        net = bundle_parser(bundle, overrides, config).get_parsed_content("network_def")
        flags = {m.use_flash_attention for m in net.modules() if isinstance(m, WindowAttention)}
        assert flags == {value}, (bundle, config, value, flags)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_multi_gpu_config_parses(bundle):
    """multi_gpu_train.json merges with train.json and references only ids that exist."""
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(configs(bundle, "train.json", "multi_gpu_train.json"))
    for part in ("train", "validate"):  # each rank reads its own share of the cases, validation without padding
        assert p[part]["dataset"]["_target_"] == "common.distributed.sharded", (bundle, part)
    assert "sampler" not in p["validate"]["dataloader"], bundle  # a sampler would repeat or drop cases
    if "sampler" in p["train"]["dataloader"]:  # the 2D bundles draw slices_per_epoch slices: each rank its share
        assert p["train"]["dataloader"]["sampler"] == "@train#sampler"
        assert "common.distributed.samples_per_rank" in p["train"]["sampler"], bundle
    assert p["validate"]["dataset"]["pad"] is False
    assert p["validate"]["key_metric"]["val_mean_dice"]["_target_"] == "common.distributed.MeanDice"
    assert "common.distributed.init()" in " ".join(p["initialize"])
    assert p["train"]["trainer"]["train_handlers"].startswith("$common.distributed.rank0_handlers")


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_training_workers_fit_the_machine(bundle):
    """train.json asks for the model zoo's 4 DataLoader workers, no more than this process has CPUs."""
    from common.bundle import bundle_parser

    workers = bundle_parser(bundle, config="train.json").get_parsed_content("num_workers")
    assert workers == min(4, len(os.sched_getaffinity(0)))


@pytest.mark.parametrize("bundle", sorted(f.parent.parent.name for f in BUNDLES.glob("*/configs/demo.json")))
def test_demo_network_is_the_same_for_training_and_inference(bundle):
    """A demo's ``model.pt`` (trained with train.json + demo.json) loads into inference.json + demo.json."""
    from common.bundle import bundle_parser

    demo = BUNDLES / bundle / "configs" / "demo.json"
    shapes = []
    for config in ("train.json", "inference.json"):
        net = bundle_parser(bundle, None, config, extra=[demo]).get_parsed_content("network_def")
        shapes.append({k: tuple(v.shape) for k, v in net.state_dict().items()})
    assert shapes[0] == shapes[1] and len(shapes[0]) > 0


@pytest.mark.parametrize("bundle", sorted(f.parent.parent.name for f in BUNDLES.glob("*/configs/demo.json")))
def test_demo_training_recipe_builds(bundle):
    """A demo's overrides of the training recipe (Swin-Unet's swaps the optimizer) build with train.json: the
    optimizer holds every parameter of the network, at the demo's learning rate."""
    from common.bundle import bundle_parser

    demo = BUNDLES / bundle / "configs" / "demo.json"
    parser = bundle_parser(bundle, None, "train.json", extra=[demo])
    net, opt = parser.get_parsed_content("network"), parser.get_parsed_content("optimizer")
    assert [g["lr"] for g in opt.param_groups] == [parser.get_parsed_content("learning_rate")]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in net.parameters()}


def test_configs_are_valid_json():
    files = sorted(BUNDLES.glob("*/configs/*.json"))
    assert len(files) >= 5 * len(BUNDLE_NAMES)  # the glob reached every bundle's configs
    for f in files:
        json.loads(f.read_text(encoding="utf-8"))


MODEL_ZOO_LAYOUT = (
    "configs/metadata.json",
    "configs/train.json",
    "configs/inference.json",
    "configs/evaluate.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "docs/README.md",
)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_model_zoo_layout_and_finished_docs(bundle):
    for rel in MODEL_ZOO_LAYOUT:
        assert (BUNDLES / bundle / rel).is_file(), f"{bundle}: {rel} missing"
    docs = (BUNDLES / bundle / "docs" / "README.md").read_text(encoding="utf-8")
    for token in ("SPEED", "BENCHMARK", "DEMO_RESULTS", "TODO", "TBD"):
        assert not re.search(rf"\b{token}\b", docs), f"{bundle}: docs still hold the placeholder {token}"


DOCS_MAX_BYTES = 8000  # "a few KB": detail lives in the repository README and docs/benchmarks.md


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_docs_follow_the_model_zoo_outline_and_leave_timings_to_the_benchmark(bundle):
    """Overview, data, training, reproduce, inference, evaluation, deviations, references, in that order; speed
    figures live in docs/benchmarks.md alone (no seconds, speed-ups or per-second rates in a bundle's docs); the
    docs stay at a few KB."""
    docs = (BUNDLES / bundle / "docs" / "README.md").read_text(encoding="utf-8")
    heads = re.findall(r"^## (\S+)", docs, re.M)
    assert heads == ["Data", "Training", "Reproduce", "Inference", "Evaluation", "Deviations", "References"], heads
    assert docs.startswith("# ") and "docs/benchmarks.md" in docs
    size = len(docs.encode("utf-8"))
    assert size <= DOCS_MAX_BYTES, f"{bundle}: docs/README.md is {size} bytes; a bundle's docs stay at a few KB"
    timings = re.findall(r"\b\d+(?:\.\d+)? ?(?:s|ms|min)\b|\d(?:\.\d+)?x faster|\bit/s\b|slices/s", docs)
    assert not timings, timings[:5]


def test_resumable_state_replaces_a_stale_longer_run(tmp_path):
    """Training afresh (no resume) into a folder holding a longer run's state: the new run's state survives.

    The old file (epoch 4) outnumbers the new run's first ones; keeping 'the highest epoch' deleted the file
    the saver had just written, and the saver then failed removing it at the next epoch. The temporary file of
    a save killed before its rename goes too.
    """
    import torch
    from ignite.engine import Engine

    from common.bundle import latest_checkpoint, make_resumable

    (tmp_path / "checkpoint_epoch=4.pt").write_bytes(b"an older run")
    (tmp_path / ".checkpoint_epoch=5.pt.k2x9.partial.pt").write_bytes(b"a save killed before its rename")
    trainer = Engine(lambda engine, batch: None)
    make_resumable(trainer, tmp_path, {"model": torch.nn.Linear(2, 2)}, resume=False)
    trainer.run([0, 1], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=3.pt"]
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=3.pt")
    state = torch.load(tmp_path / "checkpoint_epoch=3.pt", weights_only=True)
    assert set(state) == {"model", "trainer"}


@pytest.mark.parametrize("what", ["model.pt", "training state"])
def test_a_checkpoint_write_killed_midway_leaves_the_previous_file(what, tmp_path, monkeypatch):
    """torch.save failing half-way through a checkpoint (a kill, a full disk): the previous ``model.pt`` / epoch
    state keeps its bytes and no partial file is left, for the saver every ``train.json`` uses and for the
    per-epoch training state. MONAI's own CheckpointSaver writes in place and leaves half a file."""
    import errno
    import io

    import torch
    from ignite.engine import Engine, Events

    from common.bundle import CheckpointSaver, make_resumable
    from common.errors import InputError

    for bundle in BUNDLE_NAMES:
        handlers = json.loads((BUNDLES / bundle / "configs" / "train.json").read_text(encoding="utf-8"))
        savers = [h["_target_"] for h in handlers["validate"]["handlers"] if "CheckpointSaver" in h["_target_"]]
        assert savers == ["common.bundle.CheckpointSaver"], (bundle, savers)

    model = torch.nn.Linear(3, 2)
    engine = Engine(lambda engine, batch: None)
    if what == "model.pt":
        engine.state.metrics = {"dice": 0.0}
        CheckpointSaver(
            str(tmp_path),
            {"model": model},
            save_key_metric=True,
            key_metric_name="dice",
            key_metric_filename="model.pt",
            key_metric_n_saved=1,
        ).attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.state.metrics.update(dice=1.0))
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(dice=e.state.epoch))
    else:
        make_resumable(engine, tmp_path, {"model": model}, resume=False)
    engine.run([0], max_epochs=1)
    (target,) = tmp_path.iterdir()
    old = target.read_bytes()

    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        with open(f, "wb") as out:
            out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "injected: no space left on device", str(f))

    monkeypatch.setattr(torch, "save", half_save)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(InputError, match="the disk is full"):  # the one disk-full message, naming the folder
        engine.run([0], max_epochs=2)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert target.read_bytes() == old


def test_synapse_overlay_trains_and_scores_nine_classes(tiny_data, tmp_path):
    """`configs/synapse.json` through a bundle: training sees the 8 organs as ids 1..8 in the papers' column order
    (other organs become background), the network has 9 outputs, and evaluation scores the synapse8 protocol."""
    import torch

    from common.labels import from_btcv_lut
    from common.protocols import protocol_organs

    bundle = "transunet_btcv"
    tiny = BUNDLE_TINY[bundle]
    wf = run_workflow(
        bundle,
        ("train.json", "synapse.json"),
        "train",
        dataset_dir=str(tiny_data),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        max_epochs=1,
        val_interval=1,
        slices_per_epoch=16,
        **tiny,
    )
    ds = wf.parser.get_parsed_content("train#dataset")
    raw = [
        nib.load(str(tiny_data / it["label"]))
        for it in json.loads((tiny_data / "dataset.json").read_text())["training"]
    ]
    want = set(
        np.unique(from_btcv_lut("synapse8")[np.concatenate([np.asarray(r.dataobj).ravel() for r in raw]).astype(int)])
    )
    seen = set()
    for i in range(len(ds)):
        seen |= set(torch.unique(ds[i]["label"]).int().tolist())
    assert seen == want and max(seen) == 8, (seen, want)
    assert wf.parser.get_parsed_content("network_def").seg_head.out_channels == 9
    out = tmp_path / "eval"
    run_workflow(
        bundle,
        ("inference.json", "evaluate.json", "synapse.json"),
        "infer",
        dataset_dir=str(tiny_data),
        output_dir=str(out),
        ckpt_path=str(tmp_path / "models" / "model.pt"),
        **tiny,
    )
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["meta"]["protocol"] == "synapse8" and res["meta"]["split"] == f"datalist in {tiny_data}"
    assert list(res["summary"]["organs"]) == [k for k, _, _ in protocol_organs("synapse8")]
    assert "in voxels" in res["meta"]["hd95_definition"]


def test_evaluation_through_the_bundle_scores_two_cases_exactly(tiny_data, tmp_path):
    """evaluate.json end to end on two validation cases with predictions known in advance (a stand-in network that
    predicts the liver everywhere): every per-case Dice and mean, from the label files alone."""
    from bundle_cases import TINY_2D_SETTINGS

    from common.labels import BTCV_ORGANS, organ

    dl = json.loads((tiny_data / "dataset.json").read_text(encoding="utf-8"))
    items = [{k: str(tiny_data / v) for k, v in it.items()} for it in (dl["training"] + dl["validation"])[-2:]]
    datalist = tmp_path / "two.json"
    datalist.write_text(json.dumps({"training": items, "validation": items}), encoding="utf-8")
    network = constant_label_network(organ("liver").id)
    run_workflow(
        "transunet_btcv",
        ("inference.json", "evaluate.json"),
        "infer",
        dataset_dir=str(tiny_data),
        datalist_file=str(datalist),
        output_dir=str(tmp_path / "eval"),
        load_pretrain=False,
        network_def=network,
        **TINY_2D_SETTINGS,
    )
    res = json.loads((tmp_path / "eval" / "results.json").read_text(encoding="utf-8"))
    assert len(res["cases"]) == 2
    for it in items:
        gt = np.asarray(nib.load(it["label"]).dataobj)
        liver = gt == organ("liver").id
        present = [o for o in BTCV_ORGANS if (gt == o.id).any()]
        dice_liver = 2 * liver.sum() / (gt.size + liver.sum())
        case = res["cases"][os.path.basename(it["label"]).replace(".nii.gz", "")]
        assert case["scores"]["liver"]["dice"] == pytest.approx(dice_liver, abs=1e-12)
        for o in BTCV_ORGANS:
            got = case["scores"][o.key]["dice"]
            if o.key != "liver":
                assert (got is None) if o not in present else got == 0.0, o.key
        mean = res["summary"]["case_mean_dice"][os.path.basename(it["label"]).replace(".nii.gz", "")]
        assert mean == pytest.approx(dice_liver / len(present), abs=1e-12)
        # every voxel predicted liver: its predicted volume is the whole grid's, every other organ's is 0
        voxel_ml = abs(np.linalg.det(nib.load(it["label"]).affine[:3, :3])) / 1000
        assert case["volumes_ml"]["liver"] == pytest.approx(gt.size * voxel_ml)
        assert all(v == 0.0 for k, v in case["volumes_ml"].items() if k != "liver")
    per_case = (tmp_path / "eval" / "metrics_per_case.csv").read_text(encoding="utf-8").splitlines()
    header = next(line for line in per_case if not line.startswith("#")).split(",")
    assert header[-13:] == [f"{o.key}_predicted_ml" for o in BTCV_ORGANS]


def test_training_killed_with_sigkill_resumes_after_its_last_saved_epoch(tiny_data, tmp_path):
    """SIGKILL a training run once an epoch's state is saved; the same command again resumes after that epoch and
    ends at max_epochs, with exactly max_epochs epochs of iterations in the final state (none repeated or lost)."""
    import signal
    import subprocess
    import sys
    import time

    import torch

    cfg = json.dumps(
        {
            **BUNDLE_TINY["unetr_btcv"],
            "dataset_dir": str(tiny_data),
            "ckpt_dir": str(tmp_path / "models"),
            "output_dir": str(tmp_path / "runs"),
            "max_epochs": 4,
            "val_interval": 100,
        }
    )
    (tmp_path / "tiny.json").write_text(cfg, encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str([str(BUNDLES / "unetr_btcv" / "configs" / "train.json"), str(tmp_path / "tiny.json")]),
    ]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "models").glob("checkpoint_epoch=*.pt")):
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    saved = sorted((tmp_path / "models").glob("checkpoint_epoch=*.pt"))
    assert saved, "no epoch was saved before the kill"
    killed_at = int(saved[-1].stem.split("=")[1])
    assert killed_at < 4, "the first run finished before it was killed"
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming training from {saved[-1]}" in second.stdout
    final = torch.load(tmp_path / "models" / "checkpoint_epoch=4.pt", map_location="cpu", weights_only=True)["trainer"]
    assert final["max_epochs"] == 4 and final["iteration"] == 4 * final["epoch_length"] == 12  # 3 volumes an epoch
    assert sorted(p.name for p in (tmp_path / "models").glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=4.pt"]


def test_cleanup_auto_is_decided_by_the_evaluation_and_used_by_inference(tiny_data, tmp_path):
    """``evaluate.json --decide_cleanup true`` writes the decision beside the checkpoint (the stand-in predicts
    liver everywhere, one component: keep-largest changes no Dice, so no organ is chosen) and records the
    cleanup in results.json; ``inference.json --cleanup auto`` then runs with it, ``--cleanup largest`` too."""
    from bundle_cases import TINY_2D_SETTINGS

    from common.labels import organ

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"a checkpoint the stand-in network does not need")
    network = constant_label_network(organ("liver").id)
    common_args = dict(load_pretrain=False, network_def=network, ckpt_path=str(ckpt), **TINY_2D_SETTINGS)
    run_workflow(
        "transunet_btcv",
        ("inference.json", "evaluate.json"),
        "infer",
        dataset_dir=str(tiny_data),
        output_dir=str(tmp_path / "eval"),
        decide_cleanup=True,
        **common_args,
    )
    decision = json.loads((tmp_path / "model.pt.cleanup.json").read_text(encoding="utf-8"))
    assert decision["keep_largest"] == [] and "liver" in decision["mean_dice"]
    res = json.loads((tmp_path / "eval" / "results.json").read_text(encoding="utf-8"))
    assert res["meta"]["inference"]["cleanup"] == "off" and res["meta"]["inference"]["tta"] == 1
    image = tiny_data / "imagesTr" / "phantom0000.nii.gz"
    for mode in ("auto", "largest"):
        out = tmp_path / f"pred-{mode}"
        run_workflow(
            "transunet_btcv",
            ("inference.json",),
            "infer",
            dataset_dir=str(image),
            output_dir=str(out),
            cleanup=mode,
            **common_args,
        )
        labels = np.asarray(nib.load(str(out / "phantom0000_seg.nii.gz")).dataobj)
        assert (labels == organ("liver").id).all()
    from common.errors import find_input_error

    with pytest.raises(Exception) as exc:
        run_workflow(
            "transunet_btcv",
            ("inference.json", "evaluate.json"),
            "infer",
            dataset_dir=str(tiny_data),
            output_dir=str(tmp_path / "eval2"),
            decide_cleanup=True,
            cleanup="largest",
            **common_args,
        )
    assert "deciding the cleanup needs the predictions as they are" in str(find_input_error(exc.value))


@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGTERM"])
def test_a_stop_signal_mid_epoch_saves_and_the_same_command_continues_at_the_next_iteration(
    signame, tiny_data, tmp_path, capsys
):
    """SIGUSR1 / SIGTERM (a scheduler's notice) after iteration 4 of 3-iteration epochs, i.e. inside epoch 2: the
    run saves its state at iteration 4 and ends normally, the signal handlers are restored, and the same command
    again trains iterations 5..9 exactly (none repeated, none lost), ending with the epoch-3 state alone."""
    import signal

    import torch
    from ignite.engine import Events

    overrides = {
        **BUNDLE_TINY["unetr_btcv"],
        "dataset_dir": str(tiny_data),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "runs"),
        "max_epochs": 3,
        "val_interval": 100,
    }
    sig = getattr(signal, signame)
    before = signal.getsignal(sig)

    def run(send_at=None) -> list[int]:
        wf = ConfigWorkflow(
            config_file=str(BUNDLES / "unetr_btcv" / "configs" / "train.json"),
            workflow_type="train",
            logging_file=False,
            **overrides,
        )
        wf.initialize()
        trainer = wf.parser.get_parsed_content("train#trainer")
        done: list[int] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: done.append(e.state.iteration))
        if send_at:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(once=send_at), lambda e: os.kill(os.getpid(), sig))
        wf.run()
        wf.finalize()
        return done

    assert run(send_at=4) == [1, 2, 3, 4]
    models = tmp_path / "models"
    assert sorted(p.name for p in models.glob("checkpoint_*.pt")) == [
        "checkpoint_epoch=1.pt",
        "checkpoint_iteration=4.pt",
    ]
    assert f"{signame}: training stopped after iteration 4" in capsys.readouterr().out
    assert signal.getsignal(sig) == before, "the handler of the signal is restored when training stops"

    assert run() == [5, 6, 7, 8, 9]
    assert "resuming training from " + str(models / "checkpoint_iteration=4.pt") in capsys.readouterr().out
    assert sorted(p.name for p in models.glob("checkpoint_*.pt")) == ["checkpoint_epoch=3.pt"]
    final = torch.load(models / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)["trainer"]
    assert final["iteration"] == 9 and final["epoch_length"] == 3


def test_a_checkpoint_of_another_configuration_names_the_arguments(trained, tiny_data, tmp_path):
    """The tiny model under the bundle's own network size: one message naming the bundle it was trained as and the
    network arguments that differ; nothing written."""
    from common.errors import InputError, find_input_error

    bundle, work, tiny = trained
    small = {k: v for k, v in tiny.items() if not k.startswith("network_def#") and k != "img_size"}
    with pytest.raises(Exception) as exc:
        run_workflow(
            bundle,
            ("inference.json",),
            "infer",
            dataset_dir=str(tiny_data / "imagesTr" / "phantom0000.nii.gz"),
            output_dir=str(tmp_path / "out"),
            ckpt_path=str(work / "models" / "model.pt"),
            **small,
        )
    err = find_input_error(exc.value)
    assert isinstance(err, InputError), exc.value
    text = str(err)
    meta = json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert text.startswith(f"{work / 'models' / 'model.pt'}: trained as {meta['name']} {meta['version']}"), text
    assert "the arguments that differ:" in text and len(text.splitlines()) == 2, text
    for key in (k.split("#")[1] for k in tiny if k.startswith("network_def#")):
        assert f"{key} " in text, (key, text)
    if bundle == "unetr_btcv":
        assert "feature_size 4 (this configuration: 16)" in text and "hidden_size 32 (this configuration: 768)" in text
    assert not (tmp_path / "out").exists()
