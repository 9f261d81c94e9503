"""Experiment tracking with MLflow: what ``monai.bundle run ... --tracking mlflow`` adds to a bundle's training.

MONAI's ``--tracking mlflow`` appends an ``MLFlowHandler`` to ``train#handlers`` and ``validate#handlers``: it
logs the training loss per iteration, the learning rate, the validation Dice per validation, and the executed
config. ``train.json`` names the run (``run_name``, one per bundle and checkpoint folder), so a run stopped by a
signal or killed is continued by the same command: the handler picks the unfinished run of that name. What
MONAI's handler leaves out, :class:`MLflowArtifacts` adds: the final model, and the executed config where an
``output_dir`` given on the command line hides it from MONAI's handler. Without ``--tracking`` it does nothing,
and mlflow (``pip install -e ".[tracking]"``) is imported only when tracking is on.
"""

from __future__ import annotations

import glob
import hashlib
import os

__all__ = ["MLflowArtifacts", "run_name"]


def run_name(bundle: str, ckpt_dir: str | os.PathLike) -> str:
    """The MLflow run name of a training: the bundle and its checkpoint folder, so rerunning the same command (a
    resumed training) continues the run, and another folder starts another."""
    digest = hashlib.sha256(os.path.abspath(os.fspath(ckpt_dir)).encode()).hexdigest()[:8]
    return f"{bundle}-{digest}"


def _mlflow_handlers(engine) -> list:
    """The ``MLFlowHandler`` objects attached to ``engine`` (ignite keeps no public list of its handlers: each
    one registers its bound ``start`` method on STARTED)."""
    from ignite.engine import Events
    from monai.handlers import MLFlowHandler

    found = []
    for entry in getattr(engine, "_event_handlers", {}).get(Events.STARTED, []):
        owner = getattr(entry[0], "__self__", None)
        if isinstance(owner, MLFlowHandler) and owner not in found:
            found.append(owner)
    return found


class MLflowArtifacts:
    """Logs ``files`` (the final model) and the newest ``config_*.json`` in ``config_dir`` (MONAI writes the
    executed config there) to the run of the trainer's ``MLFlowHandler`` when training completes. It must come
    before that handler in ``train#handlers`` (MONAI appends its own last), so the run is still open. A run
    stopped by a signal does not complete: its artifacts are logged when the resumed run completes."""

    def __init__(self, files=(), config_dir: str | os.PathLike | None = None):
        self.files = [os.fspath(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
        self.config_dir = os.fspath(config_dir) if config_dir is not None else None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        handlers = [h for h in _mlflow_handlers(engine) if h.cur_run is not None]
        if not handlers:
            return
        paths = [f for f in self.files if os.path.isfile(f)]
        if self.config_dir:
            configs = glob.glob(os.path.join(glob.escape(self.config_dir), "config_*.json"))
            if configs:
                paths.append(max(configs, key=os.path.getmtime))
        for path in paths:
            handlers[0].client.log_artifact(handlers[0].cur_run.info.run_id, path)
