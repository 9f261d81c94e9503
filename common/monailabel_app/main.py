"""MONAI Label app that serves the BTCV bundles through MONAI Label's own ``BundleInferTask``/``BundleTrainTask``.

    monailabel start_server --app common/monailabel_app --studies /data/ct \
        --conf models all --conf zoo_source local [--conf bundles_dir /path/to/bundles]

``--conf models``: comma-separated bundle names (``unetr_btcv,transunet_btcv``) or ``all``. Each name is looked
up in the app's ``model/`` folder (MONAI Label's convention), then in ``--conf bundles_dir`` (default: this
repository's ``bundles/``). Nothing is ever downloaded: a name found nowhere stops the server with the list
of bundles that exist (``--conf zoo_source local`` is accepted and is what this app does anyway).

A bundle serves inference once it has ``models/model.pt`` (train it with its ``train.json``, or from MONAI
Label: ``POST /train/<bundle>``, which writes ``models/model.pt`` into the bundle folder). The 2D bundles
are served as 3D-volume models: they take a CT volume and return a label volume on its grid.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)

DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"


def _is_bundle(path: Path) -> bool:
    return (path / "configs" / "metadata.json").is_file() and (path / "configs" / "inference.json").is_file()


def resolve_bundles(app_dir: str | os.PathLike, conf: dict) -> dict[str, str]:
    """``{name: bundle folder}`` for ``conf['models']``, from ``<app_dir>/model`` then ``conf['bundles_dir']``."""
    roots = [Path(app_dir) / "model", Path(conf.get("bundles_dir") or DEFAULT_BUNDLES_DIR).expanduser()]
    available: dict[str, Path] = {}
    for root in reversed(roots):  # the app's model/ folder wins over bundles_dir
        if root.is_dir():
            available.update({p.name: p for p in sorted(root.iterdir()) if _is_bundle(p)})
    wanted = [m.strip() for m in (conf.get("models") or "").split(",") if m.strip()]
    if not wanted:
        raise ValueError(
            "no bundle selected: start the server with --conf models <name>[,<name>...] or --conf models all; "
            f"available: {', '.join(sorted(available)) or 'none (set --conf bundles_dir)'}"
        )
    if wanted == ["all"]:
        wanted = sorted(available)
    missing = [m for m in wanted if m not in available]
    if missing:
        raise ValueError(
            f"bundle(s) not found: {', '.join(missing)} (looked in {', '.join(str(r) for r in roots)}); "
            f"available: {', '.join(sorted(available)) or 'none'}. This app never downloads bundles."
        )
    return {m: str(available[m]) for m in wanted}


def _weights_problem(path: str) -> str:
    """Why the bundle's ``models/model.pt`` does not fit the network its ``inference.json`` builds (one message
    naming the differing arguments or the overlay that builds it), or ``""`` when it fits."""
    from monai.bundle import ConfigParser

    from common.errors import InputError
    from common.weights import load_weights, with_overlay_hint

    ckpt = Path(path) / "models" / "model.pt"
    parser = ConfigParser()
    parser.read_config(str(Path(path) / "configs" / "inference.json"))
    parser["bundle_root"] = str(path)
    try:
        load_weights(parser.get_parsed_content("network_def"), ckpt, purpose="inference")
    except InputError as e:
        from common.workflow import network_args

        return str(with_overlay_hint(e, ckpt, path, current=network_args(parser)))
    return ""


def _input_error(exc: BaseException):
    """The InputError behind ``exc`` (MONAI wraps it in RuntimeErrors), or ``exc`` itself re-raised."""
    from common.errors import find_input_error

    err = find_input_error(exc)
    if err is None:
        raise exc
    return err


class BTCVBundlesApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = dict(conf or {})
        conf.setdefault("zoo_source", "local")
        self.bundles = resolve_bundles(app_dir, conf)
        from common import __version__

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="BTCV bundles",
            description="Abdominal multi-organ CT segmentation (BTCV, 13 organs): " + ", ".join(self.bundles),
            version=__version__,
        )

    def init_infers(self):
        infers = {}
        for name, path in self.bundles.items():
            task = BundleInferTask(path, self.conf)
            if not task.is_valid():
                logger.warning(
                    f"{name}: not served for inference yet ({path}/models/model.pt not found); train it first"
                )
                continue
            problem = _weights_problem(path)
            if problem:
                logger.error(f"{name}: not served for inference: {problem}")
                continue
            infers[name] = task
        return infers

    def infer(self, request, datastore=None):
        """MONAI Label's inference, with a bad input answered as HTTP 422 and its one clear message (the file, the
        problem, the fix) instead of a bare 500; the server goes on serving."""
        try:
            return super().infer(request, datastore)
        except Exception as e:
            from fastapi import HTTPException

            err = _input_error(e)
            logger.error(f"inference refused: {err}")
            raise HTTPException(status_code=422, detail=str(err)) from None

    def train(self, request):
        """MONAI Label's training (run by the server in a task process), with a bad input reported as MONAI Label's
        INVALID_INPUT with the one clear message instead of a wall of tracebacks in the task log."""
        try:
            return super().train(request)
        except Exception as e:
            from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

            err = _input_error(e)
            logger.error(f"training refused: {err}")
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, str(err)) from None

    def init_trainers(self):
        trainers = {}
        for name, path in self.bundles.items():
            task = BundleTrainTask(path, self.conf)
            if task.is_valid():
                trainers[name] = task
        return trainers
