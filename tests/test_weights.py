"""common.weights: every failure to read a weights file is one clear InputError naming the file; our own layout
loads strictly; a class-count change is re-initialised for fine-tuning and refused for inference."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from common.errors import InputError
from common.weights import load_weights, read_checkpoint, with_pretrained


def _net(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(classes)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.BatchNorm3d(4), torch.nn.Conv3d(4, classes, 1))


def _bad_files(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected message part)."""
    good = tmp_path / "good.pt"
    torch.save(_net().state_dict(), good)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("this is not a checkpoint\n")
    torch.save({"w": collections.OrderedDict(a=1), "net": torch.nn.Linear(2, 2)}, tmp_path / "objects.pt")
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pt")
    (tmp_path / "folder.pt").mkdir()
    return {
        "missing": (str(tmp_path / "nope.pt"), "checkpoint not found"),
        "folder": (str(tmp_path / "folder.pt"), "is a folder"),
        "empty": (str(tmp_path / "empty.pt"), "the file is empty"),
        "not weights": (str(tmp_path / "text.pt"), "not a PyTorch or NumPy weights file"),
        "truncated": (str(tmp_path / "truncated.pt"), "cut short or damaged"),
        "pickled objects": (str(tmp_path / "objects.pt"), "refused for safety"),
        "npz objects": (str(tmp_path / "objects.npz"), "refused for safety"),
        "no tensors": (str(tmp_path / "no_tensors.pt"), "entries that are not tensors"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "folder", "empty", "not weights", "truncated", "pickled objects", "npz objects", "no tensors"]
)
def test_every_unreadable_file_is_one_clear_message(tmp_path, case):
    path, expected = _bad_files(tmp_path)[case]
    with pytest.raises(InputError) as e:
        read_checkpoint(path)
    text = str(e.value)
    assert text.startswith(path) and expected in text
    assert "Traceback" not in text and len(text.splitlines()) <= 2


def test_wrappers_and_ddp_prefix_are_unwrapped(tmp_path):
    sd = _net().state_dict()
    for i, obj in enumerate(
        [sd, {"state_dict": sd, "epoch": 4}, {"model": sd}, {"network": sd}, {"module." + k: v for k, v in sd.items()}]
    ):
        torch.save(obj, tmp_path / f"{i}.pt")
        got = read_checkpoint(tmp_path / f"{i}.pt")
        assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    np.savez(tmp_path / "a.npz", **{k: v.numpy() for k, v in sd.items()})
    assert set(read_checkpoint(tmp_path / "a.npz")) == set(sd)


def test_own_layout_loads_strictly_and_reports(tmp_path):
    src, dst = _net(), _net()
    dst[0].weight.data.zero_()
    torch.save(src.state_dict(), tmp_path / "m.pt")
    report = load_weights(dst, tmp_path / "m.pt", purpose="inference")
    assert report["layout"] == "this network's own" and report["not_loaded"] == [] and report["reinitialised"] == []
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_keys_of_another_network_name_them_and_copy_nothing(tmp_path):
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "other.pt")
    dst = _net()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(InputError) as e:
        load_weights(dst, tmp_path / "other.pt")
    text = str(e.value)
    assert (
        "key 'weight' has no place in Sequential" in text
        and "9 missing keys: '0.bias', '0.weight', '1.bias' and 6 more" in text
    )
    assert len(text.splitlines()) <= 5  # grouped, not one line per key
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


def test_class_count_change(tmp_path, capsys):
    nine, fourteen = _net(9), _net(14)
    torch.save(nine.state_dict(), tmp_path / "nine.pt")
    with pytest.raises(InputError, match="(?s)predicts 9 classes, this configuration 14.*synapse.json"):
        load_weights(fourteen, tmp_path / "nine.pt", purpose="inference")
    head = fourteen[2].weight.detach().clone()
    with_pretrained(fourteen, tmp_path / "nine.pt")
    out = capsys.readouterr().out
    assert "trained for 9 classes, this network has 14" in out and "2.bias, 2.weight" in out
    assert torch.equal(fourteen[2].weight, head)  # the head keeps its initialisation
    assert torch.equal(fourteen[0].weight, nine[0].weight)  # the rest is loaded
    # any other mismatch is an error even for fine-tuning
    wide = torch.nn.Sequential(torch.nn.Conv3d(1, 5, 3), torch.nn.BatchNorm3d(5), torch.nn.Conv3d(5, 14, 1))
    with pytest.raises(InputError, match="shape of '0.weight'"):
        load_weights(wide, tmp_path / "nine.pt")


def test_a_checkpoint_record_loads_safely(tmp_path):
    """What train.json saves beside the weights (bundle, version, seed, the machine) loads with weights_only=True:
    a value torch refuses there (``torch.__version__`` is a ``str`` subclass) would make every trained model.pt
    unreadable."""
    from common.bundle import CheckpointRecord
    from common.weights import checkpoint_record, read_torch_file

    net = torch.nn.Linear(2, 3)
    path = tmp_path / "model.pt"
    torch.save(
        {"model": net.state_dict(), "bundle": CheckpointRecord("unetr_btcv", "0.6.0", seed=3).state_dict()}, path
    )
    record = checkpoint_record(path)
    assert record is not None and record["seed"] == 3 and record["machine"]["torch"] == str(torch.__version__)
    assert set(read_torch_file(path)) == {"model", "bundle"}
    fresh = torch.nn.Linear(2, 3)
    load_weights(fresh, path)
    assert torch.equal(fresh.weight, net.weight)
