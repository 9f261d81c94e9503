"""`multi_gpu_train.json` under `torchrun` with CPU processes (gloo picked automatically): tiny epochs."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest
import torch
from bundle_cases import BUNDLE_TINY, FAMILIES
from conftest import BUNDLES, TINY_SHAPE, TINY_SPACING
from monai.bundle import ConfigParser

from common.weights import load_weights

# Written by every rank at the end (before the process group goes): the cases the rank cached for training and for
# validation, how many iterations it trained, its handlers, and what its validation reported.
RECORD = (
    "$open(os.path.join(@output_dir, 'rank%d.txt' % torch.distributed.get_rank()), 'w').write(repr({"
    "'rank': torch.distributed.get_rank(), 'world': torch.distributed.get_world_size(), "
    "'backend': torch.distributed.get_backend(), "
    "'train_cases': [d['image'] for d in @train#dataset.data], "
    "'validation_cases': [d['image'] for d in @validate#dataset.data], "
    "'iterations': @train#trainer.state.iteration, "
    "'val_mean_dice': @validate#evaluator.state.metrics.get('val_mean_dice'), "
    "'scored': tuple(@validate#evaluator.state.metric_details['val_mean_dice'].shape), "
    "'handlers': sorted(type(h).__name__ for h in @train#trainer#train_handlers + @validate#evaluator#val_handlers)}))"
)
# every rank's weights at the end of the epoch
WEIGHTS = "$torch.save(@network.module.state_dict(), os.path.join(@output_dir, 'weights%d.pt' % torch.distributed.get_rank()))"
WRITERS = {"CheckpointSaver", "TensorBoardStatsHandler", "StatsHandler"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def torchrun(configs: list[str], nproc: int, cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", str(configs)]
    try:
        return subprocess.run(
            cmd, cwd=cwd, env=ENV, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout
        )
    except subprocess.TimeoutExpired as e:  # a rank waiting in a collective the others never enter
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"torchrun did not finish in {timeout} s (a rank hung)\n{out[-3000:]}", pytrace=False)


def ddp_run(bundle: str, data, work, nproc: int = 2, extra: dict | None = None) -> list[dict]:
    """``train.json`` + ``multi_gpu_train.json`` for one tiny epoch under ``torchrun`` with ``nproc`` CPU processes;
    returns each rank's :data:`RECORD`."""
    cfg = BUNDLES / bundle / "configs"
    overrides = {
        **BUNDLE_TINY[bundle],
        "dataset_dir": str(data),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "runs"),
        "max_epochs": 1,
        "val_interval": 1,
        "resume": False,
        "finalize": [RECORD, WEIGHTS, "$common.distributed.cleanup()"],
        **(extra or {}),
    }
    (work / "tiny.json").write_text(json.dumps(overrides), encoding="utf-8")
    r = torchrun([str(cfg / "train.json"), str(cfg / "multi_gpu_train.json"), str(work / "tiny.json")], nproc, work)
    if r.returncode != 0:
        pytest.fail(f"torchrun failed\n{r.stdout[-2000:]}\n{r.stderr[-6000:]}", pytrace=False)
    return [ast.literal_eval((work / "runs" / f"rank{i}.txt").read_text(encoding="utf-8")) for i in range(nproc)]


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory):
    """Four training volumes (an even split over two ranks) and two for validation."""
    from common.phantom import write_phantom_dataset

    out = tmp_path_factory.mktemp("ddp-phantoms")
    write_phantom_dataset(out, num_cases=6, num_validation=2, seed=11, shape=TINY_SHAPE, spacing=TINY_SPACING)
    return out


@pytest.mark.parametrize("bundle", FAMILIES)
def test_two_process_ddp_epoch(bundle, ddp_data, tmp_path):
    ranks = ddp_run(bundle, ddp_data, tmp_path)
    assert [d["rank"] for d in ranks] == [0, 1] and all(d["world"] == 2 and d["backend"] == "gloo" for d in ranks)
    assert all(d["iterations"] > 0 for d in ranks) and ranks[0]["iterations"] == ranks[1]["iterations"], ranks
    # each rank cached its own half of the cases, training and validation: the data set is held once, not twice
    datalist = json.loads((ddp_data / "dataset.json").read_text(encoding="utf-8"))
    for key, listed in (("train_cases", "training"), ("validation_cases", "validation")):
        a, b = (set(d[key]) for d in ranks)
        assert not a & b and len(a) == len(b) == len(datalist[listed]) // 2, (key, sorted(a), sorted(b))
        assert {os.path.basename(p) for p in a | b} == {os.path.basename(d["image"]) for d in datalist[listed]}
    # both ranks report the validation of all cases, each scored once
    assert ranks[0]["val_mean_dice"] == ranks[1]["val_mean_dice"] and ranks[0]["scored"][0] == 2

    # one model: both ranks end the epoch with the same weights, and those are what rank 0 saved
    w0, w1 = (
        torch.load(str(tmp_path / "runs" / f"weights{i}.pt"), map_location="cpu", weights_only=True) for i in (0, 1)
    )
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0), "the ranks' weights differ"
    saved_file = torch.load(str(tmp_path / "models" / "model.pt"), map_location="cpu", weights_only=True)
    state = saved_file["model"]
    assert saved_file["bundle"]["network_def"]["_target_"]  # the record of the network it holds
    assert not any(k.startswith("module.") for k in state), list(state)[:3]
    assert state.keys() == w0.keys() and all(torch.equal(state[k], w0[k]) for k in w0)
    # one writer: rank 1 keeps no handler that writes files or logs; rank 0 keeps all of them
    assert not WRITERS & set(ranks[1]["handlers"]), ranks[1]["handlers"]
    assert WRITERS <= set(ranks[0]["handlers"]), ranks[0]["handlers"]
    saved = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert saved == ["checkpoint_epoch=1.pt", "model.pt"], saved
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.json"))
    for k, v in BUNDLE_TINY[bundle].items():
        parser[k] = v
    load_weights(parser.get_parsed_content("network_def"), str(tmp_path / "models" / "model.pt"), purpose="inference")


@pytest.mark.parametrize("bundle", ["unetr_btcv", "transunet_btcv"])  # a 3D bundle, and a 2D one with BatchNorm
def test_more_ranks_than_validation_cases_score_each_case_once(bundle, ddp_data, tmp_path):
    """Three ranks, two validation cases: validation runs (a rank with no case takes part through a placeholder) and
    the mean Dice every rank reports is that of one process validating the same weights on the same cases."""
    from monai.bundle import ConfigWorkflow

    ranks = ddp_run(bundle, ddp_data, tmp_path, nproc=3)
    assert [len(d["validation_cases"]) for d in ranks] == [1, 1, 0]
    assert all(d["scored"][0] == 2 for d in ranks), [d["scored"] for d in ranks]  # two rows: each case once
    wf = ConfigWorkflow(
        config_file=str(BUNDLES / bundle / "configs" / "train.json"),
        workflow_type="train",
        logging_file=False,
        **{
            **BUNDLE_TINY[bundle],
            "dataset_dir": str(ddp_data),
            "bundle_root": str(BUNDLES / bundle),
            "ckpt_dir": str(tmp_path / "single"),
            "output_dir": str(tmp_path / "single"),
        },
    )
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    network.load_state_dict(torch.load(tmp_path / "runs" / "weights0.pt", map_location="cpu", weights_only=True))
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    single = evaluator.state.metrics["val_mean_dice"]
    assert [d["val_mean_dice"] for d in ranks] == [single] * 3, (single, [d["val_mean_dice"] for d in ranks])


def test_a_stop_signal_to_one_rank_stops_every_rank_after_the_same_iteration(ddp_data, tmp_path):
    """SIGUSR1 reaches rank 1 alone, after its iteration 3: both ranks stop after iteration 4 (the next collective
    decision), rank 0 saves the state once, and the same command resumes both at iteration 5."""
    import signal

    bundle = "unetr_btcv"
    cfg = BUNDLES / bundle / "configs"
    run = json.loads((cfg / "train.json").read_text(encoding="utf-8"))["run"]
    log = "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED, lambda e: open(os.path.join(@output_dir, 'iterations%d.txt' % torch.distributed.get_rank()), 'a').write('%d\\n' % e.state.iteration))"
    kill = "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once=3), lambda e: os.kill(os.getpid(), @signal_number) if torch.distributed.get_rank() == 1 and @send_signal else None)"
    overrides = {
        **BUNDLE_TINY[bundle],
        "dataset_dir": str(ddp_data),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "runs"),
        "max_epochs": 3,
        "val_interval": 100,
        "send_signal": True,
        "signal_number": int(signal.SIGUSR1),
        "run": [*run[:-1], log, kill, run[-1]],
    }
    configs = [str(cfg / "train.json"), str(cfg / "multi_gpu_train.json"), str(tmp_path / "tiny.json")]
    runs = tmp_path / "runs"

    def iterations() -> list[list[int]]:
        out = [[int(v) for v in (runs / f"iterations{i}.txt").read_text().split()] for i in (0, 1)]
        for i in (0, 1):
            (runs / f"iterations{i}.txt").unlink()
        return out

    (tmp_path / "tiny.json").write_text(json.dumps(overrides), encoding="utf-8")
    r = torchrun(configs, 2, tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert iterations() == [[1, 2, 3, 4]] * 2  # two cases per rank: two iterations an epoch
    assert r.stdout.count("training stopped after iteration 4") == 2, r.stdout[-3000:]
    assert "SIGUSR1: training stopped" in r.stdout and "a stop signal to another process" in r.stdout
    states = sorted(p.name for p in (tmp_path / "models").glob("checkpoint_*.pt"))
    assert states == ["checkpoint_epoch=1.pt", "checkpoint_iteration=4.pt"], states

    (tmp_path / "tiny.json").write_text(json.dumps({**overrides, "send_signal": False}), encoding="utf-8")
    r = torchrun(configs, 2, tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert iterations() == [[5, 6]] * 2
    assert sorted(p.name for p in (tmp_path / "models").glob("checkpoint_*.pt")) == ["checkpoint_epoch=3.pt"]


def test_samples_per_rank_splits_an_epoch_rounding_up(monkeypatch):
    """The 2D multi-GPU sampler's per-process share of ``slices_per_epoch`` (or of all ranks' slices)."""
    from common import distributed

    assert distributed.samples_per_rank(None) is None
    assert distributed.samples_per_rank(160) == 160  # one process
    assert distributed.samples_per_rank(None, 37) == 37
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    assert distributed.samples_per_rank(160) == 54 and distributed.samples_per_rank(159) == 53
    monkeypatch.setattr(distributed, "gather_objects", lambda n: [n, 40, 41])  # every rank's slice count
    assert distributed.samples_per_rank(None, 39) == 40


def test_shards_partition_the_cases(monkeypatch):
    """Training shards: equal lengths (padded by repeating the first cases) that together hold every case; validation
    shards: contiguous, each case in exactly one, possibly none on a rank."""
    from common import distributed

    cases = list("abcde")
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    train, val = [], []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        train.append(distributed.shard(cases, pad=True))
        val.append(distributed.shard(cases, pad=False))
    assert [len(t) for t in train] == [2, 2, 2] and set(sum(train, [])) == set(cases)
    assert val == [["a", "b"], ["c", "d"], ["e"]]
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    val = []
    for r in range(4):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        val.append(distributed.shard(cases[:2], pad=False))
    assert val == [["a"], ["b"], [], []]


def test_cohort_inference_shares_the_cases_out_and_resumes(ddp_data, tmp_path):
    """inference.json under torchrun with two processes: each predicts its own share of the folder (every case
    once, none twice), a file that is not an image is reported and left out. Run again after one output was lost
    and another cut short: only those two are predicted again, the others are left as they are."""
    import shutil

    from test_geometry import random_checkpoint

    from common.cohort import is_complete, output_path

    folder = tmp_path / "cohort"
    folder.mkdir()
    for p in sorted((ddp_data / "imagesTr").glob("*.nii.gz"))[:4]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    bundle = "unetr_btcv"
    ckpt = random_checkpoint(bundle, tmp_path / "w.pt")
    (tmp_path / "tiny.json").write_text(json.dumps(BUNDLE_TINY[bundle]), encoding="utf-8")
    out = tmp_path / "out"
    configs = [str(BUNDLES / bundle / "configs" / "inference.json"), str(tmp_path / "tiny.json")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m"]
    cmd += ["monai.bundle", "run", "--config_file", str(configs), "--dataset_dir", str(folder)]
    cmd += ["--output_dir", str(out), "--ckpt_path", ckpt, "--num_workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def run() -> str:
        r = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=900
        )
        # the process that met the broken file ends with one message naming it, after writing its other cases
        assert r.returncode != 0 and "broken.nii.gz" in r.stderr, r.stdout[-2000:] + r.stderr[-4000:]
        assert "fix or remove these files and run again" in r.stderr, r.stderr[-4000:]
        return r.stdout

    images = sorted(str(p) for p in folder.glob("phantom*.nii.gz"))
    printed = run()
    assert all(is_complete(output_path(i, out), i) for i in images)
    assert sorted(p.name for p in out.iterdir()) == sorted(output_path(i, out).name for i in images)
    # files sorted: broken, phantom0..3 -> process 0 takes broken, phantom1, phantom3; process 1 phantom0, phantom2
    assert "process 0 of 2: 3 case(s): 2 to predict, 0 already in" in printed and "1 left out" in printed
    assert "process 1 of 2: 2 case(s): 2 to predict, 0 already in" in printed
    assert "broken.nii.gz" in printed and "2 written, 0 skipped (already done), 0 left out" in printed

    lost, cut = output_path(images[0], out), output_path(images[1], out)
    lost.unlink()
    cut.write_bytes(cut.read_bytes()[:-100])
    kept = {p: p.stat().st_mtime_ns for p in (output_path(images[2], out), output_path(images[3], out))}
    printed = run()
    assert all(is_complete(output_path(i, out), i) for i in images)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "a finished case was predicted again"
    assert printed.count("1 to predict, 1 already in") == 2
