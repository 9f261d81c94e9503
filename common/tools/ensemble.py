"""Ensembles: several checkpoints of one bundle (the five folds, several seeds) or several bundles, their softmax
probabilities averaged on each input's own grid.

    python -m common.tools.ensemble --member unetr_btcv=models/fold0/model.pt --member unetr_btcv=models/fold1/model.pt \\
        --member transunet_btcv=bundles/transunet_btcv/models/model.pt --dataset_dir /path/ct --output_dir out/

Every member runs its bundle's own ``inference.json`` pieces (preprocessing, network with its checkpoint, inferer,
``--tta``, ``--autocast`` ...: ``--config BUNDLE=FILE`` and ``--override BUNDLE:key=json`` reach every member of
that bundle); its softmax probabilities are brought back to the input's grid by inverting its preprocessing, as
the bundles do by default (the 2D bundles return their logits for this); the mean over members is taken, then
the argmax, the optional ``--cleanup largest|<ml>`` (``auto`` is decided per checkpoint, not for an ensemble), and
``<case>_seg.nii.gz`` is written on the input's grid like a bundle's output. Members must share an id space
(14 BTCV classes, or 9 Synapse ones). The leaderboard scores an ensemble as one entry (``--ensemble``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, command

__all__ = ["Member", "parse_member", "ensemble_inference", "main"]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Member:
    """One member: a bundle, its checkpoint (``None``: the bundle's ``models/model.pt``), extra config files and
    overrides."""

    bundle: str
    ckpt: str | None = None
    configs: Sequence[str] = ()
    overrides: dict = field(default_factory=dict)


def parse_member(spec: str) -> Member:
    """``BUNDLE`` or ``BUNDLE=CHECKPOINT``."""
    bundle, _, ckpt = spec.partition("=")
    if not (REPO / "bundles" / bundle / "configs" / "inference.json").is_file():
        raise InputError(
            f"--member {spec}: unknown bundle {bundle!r}", hint="give BUNDLE=CHECKPOINT, BUNDLE a folder under bundles/"
        )
    return Member(bundle, ckpt or None)


class _Predictor:
    """A member's pieces, built from its bundle's ``inference.json``: what turns an image file into probabilities on
    the image's own grid."""

    def __init__(self, member: Member):
        from monai.bundle import ConfigWorkflow
        from monai.transforms import Activationsd, Invertd

        from ..weights import load_weights

        cfg = REPO / "bundles" / member.bundle / "configs"
        files = [str(cfg / "inference.json")] + [str(c) for c in member.configs]
        kw = {"datalist": [], "bundle_root": str(cfg.parent), **member.overrides}
        if member.ckpt:
            kw["ckpt_path"] = str(member.ckpt)
        wf = ConfigWorkflow(config_file=files, workflow_type="infer", **kw)
        parser = wf.parser
        if "slice_output" in parser:  # the 2D bundles: scores, not their fast label path
            parser["slice_output"] = "logits"
        get = parser.get_parsed_content
        self.name = member.bundle
        self.num_classes = int(get("num_classes"))
        self.preprocessing, self.network, self.inferer = get("preprocessing"), get("network"), get("inferer")
        self.device, self.amp = torch.device(get("device")), bool(get("amp"))
        self.ckpt = str(get("ckpt_path"))
        self.settings = {"bundle": member.bundle, "tta": get("tta"), "autocast": get("autocast")}
        if get("load_pretrain"):
            from ..bundle import require_checkpoint

            load_weights(self.network, require_checkpoint(self.ckpt, str(cfg.parent)), purpose="inference")
            self.settings["checkpoint"] = self.ckpt
        else:
            self.settings["checkpoint"] = "untrained"
        self.network.eval()
        self.post = [
            Activationsd(keys="pred", softmax=True),
            Invertd(keys="pred", transform=self.preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
        ]

    @torch.no_grad()
    def probabilities(self, image: str) -> torch.Tensor:
        """``(classes, X, Y, Z)`` softmax probabilities on ``image``'s own grid (a MetaTensor with its affine)."""
        data = self.preprocessing({"image": image})
        x = data["image"].unsqueeze(0).to(self.device)
        with torch.autocast(self.device.type, enabled=self.amp and self.device.type == "cuda"):
            pred = self.inferer(x, self.network)
        data["pred"] = pred[0].float()
        for t in self.post:
            data = t(data)
        prob = data["pred"].cpu()
        # outside what the preprocessing kept (the foreground crop) inversion pads zeros, which the bundle's own
        # argmax reads as background: the member says background there, with certainty
        outside = prob.sum(0) < 1e-6
        prob[0][outside] = 1.0
        return prob


def ensemble_inference(
    members: Sequence[Member],
    images: Sequence[str],
    output_dir: str | Path,
    cleanup: str = "off",
) -> dict:
    """Predict every image with the mean of the members' probabilities; write ``<case>_seg.nii.gz`` to
    ``output_dir``. Returns the settings (members, cleanup) for the results record."""
    from monai.transforms import SaveImaged

    from ..data import check_items
    from ..io import AtomicNibabelWriter
    from ..postprocess import OrganCleanupd

    if not members:
        raise InputError("an ensemble needs members", hint="give --member BUNDLE=CHECKPOINT, twice or more")
    check_items([{"image": str(i)} for i in images], "the ensemble's images", require_label=False)  # before any work
    if str(cleanup) == "auto":
        raise InputError(
            "--cleanup auto is decided for one checkpoint (evaluate.json --decide_cleanup), not for an ensemble",
            hint="use --cleanup largest, a volume in ml, or off",
        )
    predictors = [_Predictor(m) for m in members]
    classes = {p.num_classes for p in predictors}
    if len(classes) > 1:
        raise InputError(
            "ensemble members predict different id spaces: "
            + ", ".join(f"{p.name} {p.num_classes} classes" for p in predictors),
            hint="ensemble members that share their classes (all 14 BTCV classes, or all 9 Synapse ones)",
        )
    num_classes = classes.pop()
    cleaner = OrganCleanupd(keys="pred", mode=cleanup, num_classes=num_classes)
    saver = SaveImaged(
        keys="pred",
        output_dir=str(output_dir),
        output_postfix="seg",
        output_dtype=np.uint8,
        separate_folder=False,
        resample=False,
        print_log=False,
        writer=AtomicNibabelWriter,
    )
    for image in images:
        total = None
        for p in predictors:
            prob = p.probabilities(str(image))
            if total is not None and prob.shape != total.shape:
                raise InputError(
                    f"{image}: ensemble members returned different grids {tuple(prob.shape)}, {tuple(total.shape)}"
                )
            total = prob if total is None else total + prob
        labels = (total / len(predictors)).argmax(0, keepdim=True).to(torch.uint8)
        saver(cleaner({"pred": labels}))
    return {
        "ensemble": [p.settings for p in predictors],
        "cleanup": str(cleanup),
        "num_classes": num_classes,
    }


def _split(values: Sequence[str] | None, sep: str) -> list[tuple[str, str]]:
    out = []
    for v in values or []:
        if sep not in v:
            raise InputError(f"expected NAME{sep}VALUE, got {v!r}")
        out.append(tuple(v.split(sep, 1)))
    return out


def members_from_args(specs: Sequence[str], configs: Sequence[str] = (), overrides: Sequence[str] = ()) -> list[Member]:
    """Members from ``BUNDLE[=CKPT]`` specs, with ``BUNDLE=FILE`` configs and ``BUNDLE:key=json`` overrides."""
    members = [parse_member(s) for s in specs]
    for bundle, file in _split(configs, "="):
        for m in members:
            if m.bundle == bundle:
                m.configs = [*m.configs, file]
    for target, kv in _split(overrides, ":"):
        key, _, value = kv.partition("=")
        for m in members:
            if m.bundle == target:
                m.overrides[key] = json.loads(value)
    return members


@command
def main(argv=None) -> int:
    from ..data import inference_inputs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--member", action="append", default=[], help="BUNDLE or BUNDLE=CHECKPOINT (repeat)")
    ap.add_argument("--config", action="append", default=[], help="BUNDLE=FILE merged after its inference.json")
    ap.add_argument("--override", action="append", default=[], help="BUNDLE:key=json, e.g. unetr_btcv:tta=8")
    ap.add_argument("--dataset_dir", default="", help="a CT or a folder of them ('' = the demo phantoms)")
    ap.add_argument("--image_pattern", default=None)
    ap.add_argument("--output_dir", default="ensemble_predictions")
    ap.add_argument("--cleanup", default="off", help="off, largest or a volume in ml")
    args = ap.parse_args(argv)
    members = members_from_args(args.member, args.config, args.override)
    images = [it["image"] for it in inference_inputs(args.dataset_dir, args.image_pattern)]
    settings = ensemble_inference(members, images, args.output_dir, args.cleanup)
    print(f"{len(images)} case(s), {len(settings['ensemble'])} members: predictions written to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
