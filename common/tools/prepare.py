"""Turn a BTCV download into a checked MONAI datalist for a named split.

    python -m common.tools.prepare /data/BTCV --split dataset_0 --output /data/BTCV/datalist_dataset_0.json

The download folder is the one holding ``RawData/Training/img`` and ``.../label`` (``RawData`` or
``RawData/Training`` work too). Every file of the split is checked (exists, readable, single-channel
3D, image and label on the same grid, label values 0..13) and all problems are reported together;
nothing is written unless all files pass. Paths in the datalist are relative to the datalist's folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data import SPLITS, btcv_datalist, check_items
from ..errors import InputError, command
from ..io import atomic_write_text


def prepare(raw_root: str, split: str = "dataset_0", output: str | None = None, check: bool = True) -> Path:
    """Write the datalist of ``split`` for the BTCV download at ``raw_root``; return its path."""
    out = Path(output) if output else Path.cwd() / f"datalist_{split}.json"
    out = out.expanduser().resolve()
    absolute = btcv_datalist(raw_root, split)
    if check:
        problems: list[str] = []
        for key in ("training", "validation"):
            try:
                check_items(absolute[key], name=key)
            except InputError as e:
                problems.extend(e.problems)
        if problems:
            raise InputError(problems, hint="nothing was written; fix or remove these files and run again")
    data = btcv_datalist(raw_root, split, relative_to=out.parent)
    data["labels"] = {"0": "background"} | {str(i): n for i, n in enumerate(_organ_names(), start=1)}
    atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    return out


def _organ_names() -> list[str]:
    from ..labels import organ_names

    return organ_names()


@command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.tools.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("raw_root", help="BTCV download folder (holding RawData/Training/img and label)")
    ap.add_argument("--split", default="dataset_0", choices=sorted(SPLITS), help="named split (default dataset_0)")
    ap.add_argument("--output", default=None, help="datalist JSON to write (default ./datalist_<split>.json)")
    ap.add_argument("--no-check", action="store_true", help="skip reading the files (not recommended)")
    args = ap.parse_args(argv)
    path = prepare(args.raw_root, args.split, args.output, check=not args.no_check)
    n = {k: len(v) for k, v in SPLITS[args.split].items()}
    print(f"wrote {path} ({n['training']} training, {n['validation']} validation cases, split {args.split})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
