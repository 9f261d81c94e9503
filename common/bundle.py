"""Helpers the bundle configs call: where the bundle is, checkpoints, devices.

``bundle_root()`` lets ``python -m monai.bundle run --config_file <path>/configs/train.json`` work from any
directory: the configs set ``"bundle_root": "$common.bundle.bundle_root()"``, which finds the folder of the
config files being run (any key, ``bundle_root`` included, can still be overridden on the command line;
MONAI Label sets it itself).
"""

from __future__ import annotations

import ast
import glob
import inspect
import os
import re
import sys
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver

from .errors import InputError
from .workflow import network_args, running_workflow

__all__ = [
    "bundle_root",
    "latest_checkpoint",
    "make_resumable",
    "require_checkpoint",
    "as_bool",
    "default_device",
    "as_device",
    "use_device",
    "set_determinism",
    "default_workers",
    "bundle_configs",
    "bundle_parser",
    "CheckpointRecord",
    "CheckpointSaver",
]

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


def _root_from_config_path(path: str | os.PathLike) -> str:
    """``<bundle>/configs/x.json`` -> ``<bundle>``; a config outside a ``configs`` folder -> its folder."""
    folder = Path(path).expanduser().resolve().parent
    return str(folder.parent if folder.name == "configs" else folder)


def _config_files_from_argv(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        value = None
        if arg in ("--config_file", "--config-file") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(("--config_file=", "--config-file=")):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        value = value.strip()
        if value.startswith("["):
            try:
                return [str(v) for v in ast.literal_eval(value)]
            except (ValueError, SyntaxError):
                return [v.strip(" '\"") for v in value.strip("[]").split(",") if v.strip(" '\"")]
        return [v for v in value.split(",") if v]
    return []


class CheckpointRecord:
    """What a bundle's ``model.pt`` records beside the weights (``train.json`` saves it under ``"bundle"``): the
    bundle's name and version, the resolved ``network_def`` it was trained with (read from the running workflow), the
    training's seed and the machine it ran on (:func:`common.machine.machine`: a trained model is reproducible on one
    kind of machine, not across kinds). Inference, evaluation, export and packaging compare the network arguments
    with their own configuration to name those that differ; the evaluation names the seed and machine beside its
    scores. A plain state dict from elsewhere has none and loads as before."""

    def __init__(self, name: str = "", version: str = "", seed: int | None = None, device=None) -> None:
        from .machine import machine

        self.record = {"bundle": str(name), "version": str(version)}
        if seed is not None:
            self.record["seed"] = int(seed)
        self.record["machine"] = machine(device if device is not None else "cpu")

    def state_dict(self) -> dict:
        if "network_def" not in self.record:  # read when first saved, from the workflow that is running
            wf = running_workflow()
            if wf is not None:
                self.record["network_def"] = network_args(wf.parser)
        return self.record

    def load_state_dict(self, state: dict) -> None:
        self.record = dict(state)


def _tensor_bytes(obj) -> int:
    """The bytes of the tensors in a (nested) checkpoint: about what its file takes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class _AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` as MONAI's saver configures it (an optional fixed file name), writing through
    :func:`common.io.atomic_path` and removing the file a save replaces only once the new one is in place
    (ignite removes it first, so a kill between the two left no checkpoint at all)."""

    def __init__(self, dirname, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False)
        self.filename = filename
        self._replaced: list[str] = []

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        from .io import atomic_path

        name = self.filename or filename
        with atomic_path(self.dirname / name, _tensor_bytes(checkpoint), "about") as tmp:
            torch.save(checkpoint, tmp)
        for old in self._replaced:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)
        self._replaced.clear()

    def remove(self, filename: str) -> None:
        if idist.get_rank() == self.save_on_rank:
            self._replaced.append(self.filename or filename)


class CheckpointSaver(_MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are never left half-written or missing: MONAI's own
    saver writes in place after deleting the file it replaces, so a run killed during a save (SIGKILL, out of
    memory, a node lost) left a damaged or no ``model.pt`` and a training state that could not be resumed. The
    temporary files of a save killed before its rename are removed when the saver is created."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # what a save killed before its rename left (io.atomic_path's temporary files)
        for p in glob.glob(os.path.join(glob.escape(str(self.save_dir)), ".*.partial.pt")):
            os.remove(p)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler = _AtomicDiskSaver(ckpt.save_handler.dirname, ckpt.save_handler.filename)


def bundle_identity(root: str | os.PathLike) -> tuple[str, str]:
    """``(name, version)`` from ``<root>/configs/metadata.json``: what a config may name itself by where
    ``@_meta_`` is not loaded (MONAI Label parses the configs without the metadata)."""
    import json

    try:
        meta = json.loads((Path(root) / "configs" / "metadata.json").read_text(encoding="utf-8"))
        return str(meta.get("name", Path(root).name)), str(meta.get("version", "0"))
    except (OSError, ValueError):
        return Path(root).name, "0"


def bundle_root() -> str:
    """The root folder of the bundle whose configs are being run.

    Looked up, in order: a ``ConfigWorkflow`` on the call stack (``monai.bundle run``, or Python code
    using ``ConfigWorkflow``) gives its config folder; otherwise ``--config_file`` on the command line
    (``monai.bundle`` sub-commands such as ``verify_net_in_out`` or ``ckpt_export``); otherwise a
    ``config_file`` argument on the call stack; otherwise the current directory (the model zoo's ``"."``).
    """
    wf = running_workflow()
    if wf is not None and getattr(wf, "config_root_path", None):
        return _root_from_config_path(Path(wf.config_root_path) / "x.json")
    frame = inspect.currentframe()
    config_arg = None
    try:
        f = frame.f_back if frame is not None else None
        while f is not None:
            if config_arg is None:
                cf = f.f_locals.get("config_file")
                if isinstance(cf, (str, os.PathLike)) and str(cf).endswith((".json", ".yaml", ".yml")):
                    config_arg = str(cf)
                elif isinstance(cf, (list, tuple)) and cf and isinstance(cf[0], (str, os.PathLike)):
                    config_arg = str(cf[0])
            f = f.f_back
    finally:
        del frame
    files = _config_files_from_argv(sys.argv)
    if files:
        return _root_from_config_path(files[0])
    if config_arg is not None and os.path.exists(config_arg):
        return _root_from_config_path(config_arg)
    return os.getcwd()


_EPOCH_RX = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
_ITERATION_RX = re.compile(r"checkpoint_iteration=(\d+)\.pt$")
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")  # what a scheduler sends before it stops or preempts a job


def _numbered(ckpt_dir: str | os.PathLike, rx: re.Pattern, pattern: str) -> tuple[str, int]:
    best, best_n = "", -1
    for p in glob.glob(os.path.join(glob.escape(str(ckpt_dir)), pattern)):
        m = rx.search(p)
        if m and int(m.group(1)) > best_n:
            best, best_n = p, int(m.group(1))
    return best, best_n


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """Path of the newest resumable training state in ``ckpt_dir``, or ``""``: a ``checkpoint_iteration=I.pt``
    saved when a stop signal interrupted an epoch (every completed epoch removes it), else the newest
    ``checkpoint_epoch=N.pt``."""
    interrupted, _ = _numbered(ckpt_dir, _ITERATION_RX, "checkpoint_iteration=*.pt")
    return interrupted or _numbered(ckpt_dir, _EPOCH_RX, "checkpoint_epoch=*.pt")[0]


def require_checkpoint(path: str | os.PathLike, bundle: str | os.PathLike = "") -> str:
    """Return ``path`` if the trained weights exist, else stop with a clear message on how to get them."""
    path = str(path)
    if os.path.isfile(path):
        return path
    root = str(bundle) or os.path.dirname(os.path.dirname(path))
    raise InputError(
        f"{path}: no trained model found",
        hint=(
            "train one first:\n"
            f"    python -m monai.bundle run --config_file {os.path.join(root, 'configs', 'train.json')}\n"
            "or point at existing weights with --ckpt_path /path/to/model.pt "
            "(or run untrained with --load_pretrain false)"
        ),
    )


def default_device() -> torch.device:
    """The CUDA device of this process (``LOCAL_RANK`` under torchrun, else the first) if there is one, else the
    CPU."""
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")


def as_device(device: str | int | torch.device | None) -> torch.device:
    """``torch.device(device)``, with a bare index (``0``, what ``--device 0`` gives) a CUDA device whether or not this
    machine has one (torch maps it to the current accelerator and fails without one), and ``None`` the CPU."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cuda", device)
    return torch.device(device)


def use_device(device: str | int | torch.device) -> torch.device:
    """Make ``device`` this process's current CUDA device (``torch.cuda.set_device``); any other device is left as it
    is. Every config's ``initialize`` calls it with ``@device``: what allocates on "the current device" rather than a
    given one (a TensorRT engine, cuDNN and NCCL handles, ``torch.cuda.mem_get_info()``) then works on the configured
    GPU (``--device cuda:1``, a cohort process on ``cuda:LOCAL_RANK``), not on ``cuda:0``. Returns the device."""
    dev = as_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def set_determinism(seed: int | None = 0, deterministic: bool | str = True) -> bool:
    """MONAI's ``set_determinism(seed)`` (Python, NumPy and torch seeded; cuDNN limited to deterministic algorithms,
    its autotuning off), then, unless ``deterministic``, cuDNN's autotuning back on: it times the convolution
    algorithms for each input shape once and keeps the fastest, which makes a run faster but not repeatable bit for
    bit. Inference calls it with ``deterministic=False`` (it has nothing random, and its windows and slice batches
    have one shape); training keeps ``--deterministic true`` by default, so a rerun on the same machine gives the
    same model. Returns True (for a config's expression list)."""
    from monai.utils import set_determinism as _monai_set_determinism

    _monai_set_determinism(seed=seed)
    if not as_bool(deterministic):
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    return True


def default_workers(most: int = 4) -> int:
    """DataLoader worker processes: ``most`` (the model zoo's training value), at most one per CPU this process
    may use (more only contend for the cores; PyTorch warns about them)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(int(most), cpus))


def make_resumable(trainer, ckpt_dir: str | os.PathLike, objects: dict, resume: bool = True) -> str:
    """Save the whole training state every epoch and on a stop signal, and, if ``resume``, continue from the
    newest one.

    Attaches to ``trainer`` (an ignite engine) a saver writing ``ckpt_dir/checkpoint_epoch=N.pt`` (atomically;
    the previous one is removed) with ``objects`` (e.g. model, optimizer, lr_scheduler) plus the trainer's own
    state. SIGTERM or SIGUSR1 (a scheduler's notice before a time limit or a preemption) stops training after
    the iteration under way: the state is saved as ``checkpoint_iteration=I.pt`` and the run ends normally.
    When a saved state exists and ``resume`` is true, a ``CheckpointLoader`` restores all of it before the first
    iteration, so an interrupted run continues at the next iteration: none repeated, none lost (the rest of an
    interrupted epoch draws its batches afresh). Only rank 0 saves under DDP. Kept out of ``train#handlers``
    because those handlers are built before the trainer exists. Returns the checkpoint resumed from (``""`` if
    none).
    """
    from ignite.engine import Events
    from monai.handlers import CheckpointLoader

    state = dict(objects)
    state["trainer"] = trainer
    rank0 = (
        not torch.distributed.is_available()
        or not torch.distributed.is_initialized()
        or torch.distributed.get_rank() == 0
    )
    if rank0:
        CheckpointSaver(str(ckpt_dir), save_dict=state, save_interval=1, n_saved=1, epoch_level=True).attach(trainer)

        @trainer.on(Events.EPOCH_COMPLETED)
        def _drop_older_states(engine):
            # the saver removes only the files it wrote; the states of an earlier run in the same folder (the
            # one resumed from, or a longer run's when not resuming, or an interrupted epoch's) go here. The file
            # just written is kept by name, not as the highest number: a stale higher-numbered file must not
            # survive it.
            keep = os.path.join(str(ckpt_dir), f"checkpoint_epoch={engine.state.epoch}.pt")
            for pattern in ("checkpoint_epoch=*.pt", "checkpoint_iteration=*.pt"):
                for p in glob.glob(os.path.join(glob.escape(str(ckpt_dir)), pattern)):
                    if os.path.abspath(p) != os.path.abspath(keep):
                        os.remove(p)

    _stop_on_signals(trainer, state, ckpt_dir, rank0)
    latest = latest_checkpoint(ckpt_dir) if resume else ""
    if latest:
        _check_training_state(latest, objects.get("model"))
        CheckpointLoader(
            load_path=latest, load_dict=state, map_location=getattr(trainer.state, "device", None) or "cpu"
        ).attach(trainer)
        print(f"resuming training from {latest}", flush=True)
    return latest


def _stop_on_signals(trainer, state: dict, ckpt_dir, rank0: bool) -> None:
    """SIGTERM / SIGUSR1 during training: finish the iteration under way, save ``checkpoint_iteration=I.pt``
    (rank 0), stop. Under DDP the ranks decide together after every iteration (:func:`common.distributed.any_rank`),
    so a signal that reaches one rank stops them all after the same iteration, within the seconds ``torchrun`` gives
    its workers after passing SIGTERM on. The previous handlers come back when training ends. Only the main thread
    can take signals: elsewhere (a training run inside a server) nothing is installed."""
    import signal
    import threading

    from ignite.engine import Events
    from ignite.handlers import Checkpoint

    if threading.current_thread() is not threading.main_thread():
        return
    received: list[int] = []
    previous = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))

    from .distributed import any_rank

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop_if_signalled(engine):
        # decided by all ranks together: a signal that reaches the ranks between two of their checks would otherwise
        # stop one rank while another enters the next iteration's all-reduce and waits for it forever
        if not any_rank(bool(received)):
            return
        it = engine.state.iteration
        if rank0:
            name = f"checkpoint_iteration={it}.pt"
            Checkpoint(state, _AtomicDiskSaver(Path(ckpt_dir), name), n_saved=None)(engine)
        what = signal.Signals(received[0]).name if received else "a stop signal to another process"
        print(
            f"{what}: training stopped after iteration {it}; the state is saved in {ckpt_dir}: run the same command "
            "to resume",
            flush=True,
        )
        # not COMPLETED: handlers that close what a finished run closes (an MLflow run) leave it open to resume
        engine.terminate(skip_completed=True)

    def _restore(engine=None):
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _restore_and_raise(engine, e):
        # ignite re-raises an exception only when no handler takes it: this one must raise it again
        _restore()
        raise e

    trainer.add_event_handler(Events.COMPLETED, _restore)
    trainer.add_event_handler(Events.TERMINATE, _restore)
    trainer.add_event_handler(Events.EXCEPTION_RAISED, _restore_and_raise)


def _check_training_state(path: str, model: torch.nn.Module | None) -> None:
    """Refuse, before training starts, a saved training state that cannot be resumed: unreadable (cut short by a
    crash during the write of another tool, not a PyTorch file, unsafe objects) or saved by another network
    configuration. The hint says how to start over."""
    from .weights import read_torch_file

    hint = "delete it (training then resumes from an earlier state, or starts over) or run with --resume false"
    try:
        state = read_torch_file(path)
    except InputError as e:
        raise InputError(e.problems, hint=hint) from e
    saved = state.get("model") if isinstance(state, dict) else None
    if model is None or not isinstance(saved, dict):
        return
    ours = getattr(model, "module", model).state_dict()
    differ = [k for k in ours if k not in saved or tuple(saved[k].shape) != tuple(ours[k].shape)]
    differ += [k for k in saved if k not in ours]
    if differ:
        raise InputError(
            f"{path}: saved by another network configuration ({len(differ)} tensors differ, e.g. {differ[0]!r})",
            hint=f"train into another --ckpt_dir, or {hint}",
        )


def as_bool(value) -> bool:
    """A config flag as a bool: accepts booleans and the strings a command line gives (``false``, ``0``, ``no``)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off", "", "none"):
            return False
        raise InputError(f"not a yes/no value: {value!r}", hint="use true or false")
    return bool(value)


def bundle_configs(bundle: str, config: str = "inference.json", extra=()) -> list[str]:
    """``bundles/<bundle>/configs/<config>`` followed by ``extra`` config files (an unknown bundle is an InputError)."""
    cfg = BUNDLES_DIR / bundle / "configs"
    if not (cfg / config).is_file():
        raise InputError(f"unknown bundle {bundle!r}: {cfg / config} not found")
    return [str(cfg / config)] + [str(c) for c in extra]


def bundle_parser(bundle: str, overrides: dict | None = None, config: str = "inference.json", extra=()):
    """A ``ConfigParser`` of a bundle of this repository (for the command-line tools): its config (plus ``extra``),
    its metadata, ``bundle_root`` set to the bundle folder, then ``overrides`` (``key#sub`` ids allowed)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle_configs(bundle, config, extra))
    parser.read_meta(str(BUNDLES_DIR / bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(BUNDLES_DIR / bundle)
    for k, v in (overrides or {}).items():
        parser[k] = v
    return parser
