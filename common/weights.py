"""Network weights: one way to read, convert and load them, for every bundle and every entry point.

* :func:`read_checkpoint` reads a file safely (PyTorch with ``weights_only=True``, NumPy ``.npz`` with
  ``allow_pickle=False``), unwraps it (a state dict under ``state_dict`` / ``model`` / ``network``, the ``module.``
  prefix of a DDP or DataParallel save) and turns every failure into one :class:`~common.errors.InputError` that
  names the file, the problem and the fix: missing, a folder, not a weights file, cut short, or refused for safety
  because it holds Python objects other than tensors.
* Each network module keeps only pure *converters* (``CONVERTERS``): functions ``(state, network) ->``
  :class:`Conversion` ``| None`` that recognise an official layout by its keys and rename / reshape it into ours
  (the style of timm's ``checkpoint_filter_fn``). A file in our own layout needs no converter.
* :func:`load_weights` picks the layout, checks every key and shape, and copies all or nothing; the report says
  what was loaded, what was ignored by design and what kept its initialisation. A file trained for another number
  of classes is the one tolerated mismatch, and only for fine-tuning (``purpose="finetune"``): the output layer is
  re-initialised with a one-line notice. Inference and evaluation refuse it.

The configs reach this module through :func:`with_pretrained` (``train.json``) and :class:`CheckpointLoader`
(``inference.json``).
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .workflow import differing_args, network_args, running_workflow

__all__ = [
    "Conversion",
    "read_checkpoint",
    "read_torch_file",
    "converters_for",
    "convert",
    "renamed",
    "load_weights",
    "with_pretrained",
    "CheckpointLoader",
    "with_overlay_hint",
    "checkpoint_record",
    "fitting_overlays",
    "OVERLAY_EXCLUDED",
    "PURPOSES",
]

PURPOSES = ("finetune", "inference")
_WRAPPER_KEYS = ("state_dict", "model", "network")
_MAX_LISTED = 40

# network class name (anywhere in the MRO) -> module holding its CONVERTERS; imported only when needed
# networks that are not written here (MONAI's) and the module holding their converters; a network written here
# keeps its CONVERTERS in its own module
_FOREIGN_CONVERTERS = {"SwinUNETR": ".networks.swinunetr", "MedNeXt": ".networks.mednext"}


@dataclass
class Conversion:
    """What a converter made of a file in a foreign layout.

    Attributes:
        layout: a short name for the file's layout (shown in reports and messages).
        tensors: our state-dict name -> value.
        ignored: file key -> why it is not used (by design: a classifier head, pre-training heads, ...).
        unused: file keys that have no place in the network (errors).
        problems: anything else the converter found wrong (errors).
        partial: the file initialises only part of the network (a pretrained encoder); the rest keeps its
            initialisation. With ``partial``, ``required`` lists our names that must receive a value.
        required: see ``partial``; ignored for full layouts, where every entry of the state dict is required.
        notes: extra facts for the report (e.g. how a position embedding was resized).
        finetune_only: the tensors were made for initialising training (resampled kernels), not for predicting:
            refused for inference.
    """

    layout: str
    tensors: dict[str, torch.Tensor]
    ignored: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    partial: bool = False
    required: Sequence[str] = ()
    notes: dict = field(default_factory=dict)
    finetune_only: bool = False


Converter = Callable[[Mapping[str, object], torch.nn.Module], "Conversion | None"]


# ------------------------------------------------------------------------------------------------------- reading


def _refuse(path: Path, problem: str, hint: str) -> InputError:
    return InputError(f"{path}: {problem}", hint=hint)


_RESAVE = "re-save it from Python with torch.save(model.state_dict(), path)"


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise _refuse(
                path,
                "holds Python objects, not plain arrays: refused for safety (allow_pickle=False)",
                "use a .npz of numeric arrays only",
            ) from e
        raise _refuse(path, f"not a readable NumPy .npz file ({e})", "check that the file is complete") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise _refuse(path, f"the .npz file is damaged or cut short ({e})", "copy or download it again") from e


def read_torch_file(path: str | os.PathLike):
    """What ``torch.load(path, weights_only=True)`` gives (a training state, say), every failure an
    :class:`InputError` naming the file: missing, not a PyTorch file, cut short, or holding unsafe objects."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise _refuse(p, "checkpoint not found" if not p.exists() else "is not a file", "check the path")
    return _read_torch(p)


def _read_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "can still be loaded" in str(e):  # a real pickle of Python objects
            raise _refuse(
                path,
                "holds Python objects other than tensors, so it was refused for safety (loaded with weights_only=True)",
                f"if you trust the file, {_RESAVE}",
            ) from e
        raise _refuse(
            path, "not a PyTorch or NumPy weights file", "give a .pt/.pth saved by torch.save or a .npz"
        ) from e
    except Exception as e:  # noqa: BLE001 - torch's legacy reader fails in many ways on a file that is not its own
        text = str(e)
        if "zip archive" in text or "central directory" in text or isinstance(e, EOFError):
            raise _refuse(
                path, "the file is cut short or damaged (incomplete archive)", "copy or download it again"
            ) from e
        raise _refuse(
            path,
            f"not a PyTorch or NumPy weights file ({type(e).__name__})",
            "give a .pt/.pth saved by torch.save or a .npz",
        ) from e


def _unwrap(obj, path: Path) -> dict:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise _refuse(
            path,
            f"holds no state dict (found {type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''})",
            f"give a file of named tensors; {_RESAVE}",
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, (torch.Tensor, np.ndarray))]
    if bad:
        raise _refuse(
            path,
            f"holds entries that are not tensors: {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}",
            f"give a file of named tensors; {_RESAVE}",
        )
    if all(k.startswith("module.") for k in obj):  # DDP / DataParallel save
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The named tensors of a weights file (``.pt``/``.pth``/``.ckpt`` or ``.npz``), unwrapped; see the module doc.

    Values are ``torch.Tensor`` (PyTorch files) or ``numpy.ndarray`` (``.npz``). Every failure is an
    :class:`InputError` naming the file, the problem and the fix.
    """
    p = Path(path).expanduser()
    if not str(path):
        raise InputError("no checkpoint file given", hint="set the path (--ckpt_path / --pretrained_path)")
    if not p.exists():
        raise _refuse(p, "checkpoint not found", "check the path (--ckpt_path / --pretrained_path)")
    if p.is_dir():
        raise _refuse(p, "is a folder, not a checkpoint file", "give the weights file itself (e.g. models/model.pt)")
    with open(p, "rb") as f:
        head = f.read(4)
    if not head:
        raise _refuse(p, "the file is empty", "copy or download it again")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise _refuse(
                p, "the file is cut short or damaged (incomplete archive)", "copy or download it again"
            ) from e
        if names and all(n.endswith(".npy") for n in names):
            return _unwrap(_read_npz(p), p)
    return _unwrap(_read_torch(p), p)


# ---------------------------------------------------------------------------------------------------- converting


def renamed(state: Mapping[str, object], rename: Callable[[str], "str | None"], layout: str) -> Conversion:
    """A conversion that only renames keys (every tensor keeps its layout): ``rename`` gives our name for a file key,
    or ``None`` when it has no place (reported as unused)."""
    tensors: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        ours = rename(key)
        if ours is None:
            unused.append(key)
        else:
            tensors[ours] = torch.as_tensor(value)
    return Conversion(layout, tensors, unused=unused)


def converters_for(network: torch.nn.Module) -> tuple[Converter, ...]:
    """The converters of ``network``'s class, looked up along its MRO (so the slice-wise 2D wrappers match): the
    ``CONVERTERS`` of the module defining the class, or of the module named for a MONAI network."""
    for cls in type(network).__mro__:
        if cls.__name__ in _FOREIGN_CONVERTERS:
            return tuple(importlib.import_module(_FOREIGN_CONVERTERS[cls.__name__], __package__).CONVERTERS)
        found = getattr(sys.modules.get(cls.__module__), "CONVERTERS", None)
        if found is not None:
            return tuple(found)
    return ()


def _own_layout(state: Mapping[str, object], network: torch.nn.Module) -> Conversion:
    ours = network.state_dict()
    tensors = {k: torch.as_tensor(v) for k, v in state.items() if k in ours}
    return Conversion("this network's own", tensors, unused=[k for k in state if k not in ours])


def convert(state: Mapping[str, object], network: torch.nn.Module) -> Conversion:
    """The file's content in our names: its own layout when the keys and shapes are ours, else the first converter
    of the network that recognises it, else our own layout (whose unknown keys, missing keys and shapes are then
    reported)."""
    ours = network.state_dict()
    if set(state) == set(ours) and all(
        tuple(getattr(v, "shape", ())) == tuple(ours[k].shape) for k, v in state.items()
    ):
        return _own_layout(state, network)
    for converter in converters_for(network):
        conversion = converter(state, network)
        if conversion is not None:
            return conversion
    return _own_layout(state, network)


# ------------------------------------------------------------------------------------------------------- loading


def _class_count_change(mismatched: list[tuple[str, tuple, tuple]]) -> tuple[int, int] | None:
    """(classes in the file, classes in the network) when every mismatch is an output layer's class dimension."""
    if not mismatched:
        return None
    pairs = {(f[0], o[0]) for _, f, o in mismatched if len(f) == len(o) and len(f) >= 1 and f[1:] == o[1:]}
    if len(pairs) != 1 or sum(1 for _, f, o in mismatched if len(f) == len(o) and f[1:] == o[1:]) != len(mismatched):
        return None
    return next(iter(pairs))


def _grouped(what: str, verb: str, keys: list[str], shown: int = 3) -> list[str]:
    """One problem per kind: the first ``shown`` keys by name, then how many more (a file of another network would
    otherwise list every one of its keys)."""
    if not keys:
        return []
    if len(keys) <= shown:
        return [f"{what} {k!r} {verb}".rstrip() for k in keys]
    names = ", ".join(repr(k) for k in keys[:shown])
    return [f"{len(keys)} {what}s{' ' + verb if verb else ''}: {names} and {len(keys) - shown} more"]


def _listed(items: list[str]) -> list[str]:
    return items[:_MAX_LISTED] + ([f"... and {len(items) - _MAX_LISTED} more"] if len(items) > _MAX_LISTED else [])


def load_weights(network: torch.nn.Module, path: str | os.PathLike, purpose: str = "finetune") -> dict:
    """Load a weights file into ``network``: read, convert, check every key and shape, copy all or nothing.

    Args:
        network: the network to fill (modified in place).
        path: the file; any layout ``converters_for(network)`` knows, or our own.
        purpose: ``"finetune"`` (training starts from the file: a different class count re-initialises the output
            layer with a notice) or ``"inference"`` (inference, evaluation, export: every tensor must fit).

    Returns:
        ``{"file", "layout", "loaded", "num_tensors", "ignored", "not_loaded", "reinitialised", **notes}``.

    Raises:
        InputError: naming the file, every key or shape that does not fit, and the fix; nothing is copied.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    path = Path(path).expanduser()
    state = read_checkpoint(path)
    conv = convert(state, network)
    ours = network.state_dict()
    name = type(network).__name__
    if conv.finetune_only and purpose == "inference":
        raise InputError(
            f"{path}: these weights ({conv.layout}) initialise training, they do not predict with this configuration",
            hint="predict with the configuration they were trained with, or train from them with --pretrained_path",
        )
    problems = list(conv.problems)
    problems += _grouped("key", "has no place in " + name, conv.unused)
    problems += _grouped("converted key", "has no place in " + name, [k for k in conv.tensors if k not in ours])
    required = set(conv.required) if conv.partial else set(ours)
    problems += _grouped("missing key", "", sorted(required - set(conv.tensors)))
    mismatched = [
        (k, tuple(v.shape), tuple(ours[k].shape))
        for k, v in conv.tensors.items()
        if k in ours and tuple(v.shape) != tuple(ours[k].shape)
    ]
    change = _class_count_change(mismatched) if not problems else None
    reinitialised: list[str] = []
    if change is not None and purpose == "finetune":
        reinitialised = sorted(k for k, _, _ in mismatched)
        print(
            f"{path}: trained for {change[0]} classes, this network has {change[1]}: the output layer "
            f"({', '.join(reinitialised)}) starts from its initialisation",
            flush=True,
        )
    elif change is not None:
        raise InputError(
            f"{path}: the checkpoint predicts {change[0]} classes, this configuration {change[1]}",
            hint=f"run with the configuration it was trained with (num_classes {change[0]}; "
            + ("configs/synapse.json is the 9-class Synapse protocol" if change[0] == 9 else "e.g. --num_classes")
            + "); nothing was loaded",
        )
    else:
        problems += [f"shape of {k!r}: file {f}, network {o}" for k, f, o in mismatched[:3]]
        problems += [f"... and {len(mismatched) - 3} more tensors of another shape"] if len(mismatched) > 3 else []
    if problems:
        raise InputError(
            f"{path}: the weights ({conv.layout} layout) do not fit this {name} configuration; nothing was loaded:\n"
            + "\n".join(f"  - {p}" for p in _listed(problems)),
            hint="use the configuration they were trained with (a demo model needs configs/demo.json), or the file "
            "this bundle expects",
        )
    values = {k: v for k, v in conv.tensors.items() if k not in reinitialised}
    with torch.no_grad():
        for k, v in values.items():
            ours[k].copy_(torch.as_tensor(v).to(dtype=ours[k].dtype))
    return {
        "file": str(path),
        "layout": conv.layout,
        "loaded": sorted(values),
        "num_tensors": len(values),
        "ignored": dict(conv.ignored),
        "not_loaded": sorted(k for k in ours if k not in values),
        "reinitialised": reinitialised,
        **conv.notes,
    }


def with_pretrained(network: torch.nn.Module, path: str | os.PathLike | None) -> torch.nn.Module:
    """``network`` initialised from ``path`` for fine-tuning (``train.json``'s ``pretrained_path``), or unchanged
    when ``path`` is empty. Prints one line: the file, its layout and how much of the network it filled."""
    if path:
        report = load_weights(network, path, purpose="finetune")
        kept = len(report["not_loaded"])
        print(
            f"loaded pretrained weights from {path} ({report['layout']} layout): {report['num_tensors']} tensors"
            + (f", {kept} left as initialised" if kept else ""),
            flush=True,
        )
    return network


class CheckpointLoader:
    """Ignite handler for ``inference.json``: load the trained weights into ``network`` when the engine starts,
    through :func:`load_weights` (``purpose="inference"``), so every layout and every error is handled as above.
    A checkpoint saved by the official TransUNet, Swin-Unet or MT-UNet code loads as it is.


    With ``bundle_root`` (the configs pass theirs), a checkpoint that does not fit names the bundle's overlay that
    builds its network (a model trained with ``configs/demo.json`` loads only with it).
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        network: torch.nn.Module,
        purpose: str = "inference",
        bundle_root: str | os.PathLike | None = None,
    ) -> None:
        self.load_path, self.network, self.purpose, self.bundle_root = str(load_path), network, purpose, bundle_root

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        try:
            load_weights(self.network, self.load_path, purpose=self.purpose)
        except InputError as e:
            raise with_overlay_hint(e, self.load_path, self.bundle_root) from None


def checkpoint_record(path: str | os.PathLike) -> dict | None:
    """The record a bundle's ``model.pt`` keeps beside its weights (see ``common.bundle.CheckpointRecord``): bundle
    name, version and the ``network_def`` it was trained with; ``None`` for a plain state dict or an unreadable file."""
    try:
        obj = read_torch_file(path)
    except InputError:
        return None
    record = obj.get("bundle") if isinstance(obj, Mapping) else None
    return dict(record) if isinstance(record, Mapping) else None


def with_overlay_hint(
    err: InputError,
    ckpt: str | os.PathLike,
    root: str | os.PathLike | None,
    used=(),
    overrides: dict | None = None,
    current: dict | None = None,
) -> InputError:
    """``err`` for a checkpoint that does not fit, made specific where possible: the network arguments that differ
    from the ones the checkpoint records (``current``: this run's resolved ``network_def``, else the running
    workflow's), and the overlay of the bundle at ``root`` that builds the checkpoint's network."""
    if not Path(ckpt).is_file():
        return err
    record = checkpoint_record(ckpt) or {}
    if current is None and (wf := running_workflow()) is not None:
        try:
            current = network_args(wf.parser)
        except Exception:  # noqa: BLE001 - without this run's arguments the message names no argument
            current = None
    differ = differing_args(record["network_def"], current) if record.get("network_def") and current else []
    fits = fitting_overlays(root, ckpt, used, overrides) if root and Path(root, "configs").is_dir() else []
    if not differ and not fits:
        return err
    what = f"trained as {record.get('bundle')} {record.get('version')}" if record.get("bundle") else "these weights are"
    problem = f"{ckpt}: {what} of another network configuration"
    if fits:
        problem = (
            f"{ckpt}: these weights are of the network that {' or '.join(fits)} builds, not of this configuration's"
        )
    if differ:
        problem += (
            "; the arguments that differ: "
            + "; ".join(differ[:10])
            + (f"; and {len(differ) - 10} more" if len(differ) > 10 else "")
        )
    if fits:
        hint = (
            f"add {fits[0]} after the bundle's configs, e.g. --config_file "
            f"\"['{Path(root) / 'configs' / 'inference.json'}','{Path(root) / fits[0]}']\""
        )
    else:
        hint = (
            "run with the configuration it was trained with (set the arguments above, or the overlay used in training)"
        )
    return InputError(problem, hint=hint)


# config files that are not overlays of inference.json
OVERLAY_EXCLUDED = {"train.json", "inference.json", "evaluate.json", "multi_gpu_train.json", "metadata.json"}


def fitting_overlays(
    root: str | os.PathLike, ckpt: str | os.PathLike, used=(), overrides: dict | None = None
) -> list[str]:
    """The overlays of the bundle at ``root`` (``configs/*.json`` other than the base files and those in ``used``)
    under whose network ``ckpt``'s weights load: what to add when a checkpoint does not fit (a demo model needs
    ``configs/demo.json``). Empty when none fits."""
    from monai.bundle import ConfigParser

    cfg = Path(root) / "configs"
    used_names = {Path(u).name for u in used}
    fits = []
    for overlay in sorted(cfg.glob("*.json")):
        if overlay.name in OVERLAY_EXCLUDED or overlay.name in used_names:
            continue
        parser = ConfigParser()
        parser.read_config([str(cfg / "inference.json"), *map(str, used), str(overlay)])
        parser["bundle_root"] = str(root)
        for k, v in (overrides or {}).items():
            parser[k] = v
        try:
            load_weights(parser.get_parsed_content("network_def"), ckpt, purpose="inference")
        except Exception:  # noqa: BLE001 - an overlay that does not fit is simply not listed
            continue
        fits.append(f"configs/{overlay.name}")
    return fits
