"""`multi_gpu_train.json` under `torchrun` with two CPU processes (gloo picked automatically): one tiny epoch."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest
import torch
from bundle_cases import BUNDLE_NAMES, BUNDLE_TINY
from conftest import BUNDLES, TINY_SHAPE, TINY_SPACING
from monai.bundle import ConfigParser

from common.weights import load_weights

# Written by every rank at the end (before the process group goes): which dataset indices the rank's sampler
# drew from (its partition of the training set), how many it drew, and how many iterations it trained.
RECORD = (
    "$open(os.path.join(@output_dir, 'rank%d.txt' % torch.distributed.get_rank()), 'w').write(repr({"
    "'rank': torch.distributed.get_rank(), 'world': torch.distributed.get_world_size(), "
    "'backend': torch.distributed.get_backend(), 'dataset_size': len(@train#dataset), "
    "'partition': list(torch.utils.data.DistributedSampler.__iter__(@train#sampler)), "
    "'drawn': [int(i) for i in @train#sampler], 'iterations': @train#trainer.state.iteration, "
    "'handlers': sorted(type(h).__name__ for h in @train#trainer#train_handlers + @validate#evaluator#val_handlers)}))"
)
# every rank's weights at the end of the epoch
WEIGHTS = "$torch.save(@network.module.state_dict(), os.path.join(@output_dir, 'weights%d.pt' % torch.distributed.get_rank()))"
WRITERS = {"CheckpointSaver", "TensorBoardStatsHandler", "StatsHandler"}


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory):
    """Four training volumes (an even split over two ranks) and two for validation."""
    from common.phantom import write_phantom_dataset

    out = tmp_path_factory.mktemp("ddp-phantoms")
    write_phantom_dataset(out, num_cases=6, num_validation=2, seed=11, shape=TINY_SHAPE, spacing=TINY_SPACING)
    return out


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_two_process_ddp_epoch(bundle, ddp_data, tmp_path):
    cfg = BUNDLES / bundle / "configs"
    overrides = {
        **BUNDLE_TINY[bundle],
        "dataset_dir": str(ddp_data),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "runs"),
        "max_epochs": 1,
        "val_interval": 1,
        "resume": False,
        "finalize": [RECORD, WEIGHTS, "$common.distributed.cleanup()"],
    }
    (tmp_path / "tiny.json").write_text(json.dumps(overrides), encoding="utf-8")
    configs = [str(cfg / "train.json"), str(cfg / "multi_gpu_train.json"), str(tmp_path / "tiny.json")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(configs),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    if r.returncode != 0:
        pytest.fail(f"torchrun failed\n{r.stdout[-2000:]}\n{r.stderr[-6000:]}", pytrace=False)

    ranks = [ast.literal_eval((tmp_path / "runs" / f"rank{i}.txt").read_text(encoding="utf-8")) for i in (0, 1)]
    assert [d["rank"] for d in ranks] == [0, 1] and all(d["world"] == 2 and d["backend"] == "gloo" for d in ranks)
    assert all(d["iterations"] > 0 for d in ranks), ranks
    a, b = (set(d["partition"]) for d in ranks)
    n = ranks[0]["dataset_size"]
    # DistributedSampler pads an odd-sized dataset by repeating at most (world - 1) indices; otherwise disjoint
    assert len(a & b) <= n % 2, sorted(a & b)
    assert a | b == set(range(n))
    if bundle in ("transunet_btcv", "swin_unet_btcv", "mt_unet_btcv"):  # weighted draws, with replacement
        for d in ranks:
            assert set(d["drawn"]) <= set(d["partition"]), "a rank drew outside its partition"
    else:  # the 3D samplers draw their partition itself: the ranks' draws are disjoint and cover the data
        d0, d1 = (set(d["drawn"]) for d in ranks)
        assert len(d0 & d1) <= n % 2 and d0 | d1 == set(range(n)), (sorted(d0), sorted(d1))

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
    parser.read_config(str(cfg / "inference.json"))
    for k, v in BUNDLE_TINY[bundle].items():
        parser[k] = v
    load_weights(parser.get_parsed_content("network_def"), str(tmp_path / "models" / "model.pt"), purpose="inference")


def test_samples_per_rank_splits_an_epoch_rounding_up(monkeypatch):
    """The 2D multi-GPU sampler's per-process share of ``slices_per_epoch``."""
    from common import distributed

    assert distributed.samples_per_rank(None) is None
    assert distributed.samples_per_rank(160) == 160  # one process
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    assert distributed.samples_per_rank(160) == 54 and distributed.samples_per_rank(159) == 53
    assert distributed.samples_per_rank(None) is None


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
