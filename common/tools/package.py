"""Package a bundle as a self-contained folder (and zip) that runs without this project installed.

    python -m common.tools.package --bundle unetr_btcv --out dist [--ckpt path/model.pt] [--config overlay.json] [--zip]

The result, ``<out>/<bundle>/``, is a model-zoo style bundle: ``configs/`` (rewritten), ``docs/``,
``models/model.pt`` when a checkpoint is given or the bundle has one, ``LICENSE``, and the part of ``common``
its configs reach (:func:`runtime_files`: no tool, no other bundle's network) vendored as the package
``<bundle>_common`` (for example ``unetr_btcv_common``). The name is unique per
bundle, so MONAI Label (or any process) can load several packaged bundles side by side, and none of them
collides with this project's ``common`` when both are importable.

Config rewriting, applied to every ``configs/*.json``:

- ``"$import common"`` is dropped from ``imports``;
- each ``common.`` in a ``$`` expression becomes a reference ``@<bundle>_common.``, and each dotted name
  such as ``"_target_": "common.x.Y"`` becomes ``"$@<bundle>_common.x.Y"`` (MONAI accepts a resolved
  object as ``_target_``; the 2D bundles' ``network`` argument takes a class or its name);
- a key ``<bundle>_common`` is added whose expression puts ``@bundle_root`` on ``sys.path`` and imports the
  vendored package, so the package is found whatever the current directory is;
- ``bundle_root`` (``$common.bundle.bundle_root()`` here) becomes a standard-library expression that reads
  the folder of the running ``ConfigWorkflow`` (``python -m monai.bundle run --config_file ...``), else
  ``"."`` (the model-zoo convention: run from the bundle folder, or pass ``--bundle_root``). MONAI Label
  sets ``bundle_root`` itself.

What the packaged bundle needs installed: ``monai`` with the optional packages its workflows use
(``nibabel``, ``pytorch-ignite``, ``tqdm``, ``scipy``, ``einops``, ``SimpleITK``, ``tensorboard`` for training),
the same list as ``required_packages_version`` in ``metadata.json`` minus this project.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import InputError, command
from ..io import atomic_path, disk_full_error, out_of_room
from ..workflow import WORKFLOW_EXPR

__all__ = ["package_bundle", "rewrite_config", "runtime_files", "vendored_name", "main"]

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # common/

# The folder of the ConfigWorkflow being run (``monai.bundle run``), else ".": the project's own walk up the call
# stack (``common.workflow.WORKFLOW_EXPR``), standard library only, since the vendored package cannot be imported
# before its folder is known.
BUNDLE_ROOT_EXPR = (
    "$(lambda w: str((w.config_root_path.parent if w.config_root_path.name == 'configs' else w.config_root_path)"
    f".resolve()) if w is not None else '.')({WORKFLOW_EXPR})"
)
_DOTTED = re.compile(r"common(\.[A-Za-z_]\w*)+")
_COMMON_REF = re.compile(r"(?<![\w.@'\"])common\.")


def vendored_name(bundle: str) -> str:
    """``unetr_btcv`` -> ``unetr_btcv_common``: the importable name of the vendored package."""
    name = re.sub(r"\W", "_", bundle)
    if not name.isidentifier():
        name = f"b_{name}"
    return f"{name}_common"


# MONAI parses every expression containing the word "import" as Python source before substituting the
# ``@`` references, so the loader must not contain it: ``import_module`` comes in under another name.
_LOADER_IMPORTS = ["$import sys", "$from importlib import import_module as load_vendored"]


def _loader_expr(pkg: str) -> str:
    return f"$(@bundle_root in sys.path or sys.path.insert(0, @bundle_root), load_vendored('{pkg}'))[1]"


def rewrite_config(config, pkg: str):
    """Return ``config`` (a parsed bundle config) using the vendored package ``pkg`` instead of ``common``."""
    used = False

    def walk(node, key=None):
        nonlocal used
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == "imports" and isinstance(v, list):
                    v = [s for s in v if not (isinstance(s, str) and s.replace(" ", "") == "$importcommon")]
                out[k] = walk(v, k)
            return out
        if isinstance(node, list):
            return [walk(v, key) for v in node]
        if isinstance(node, str):
            if key == "bundle_root" and node.startswith("$") and "common.bundle.bundle_root" in node:
                return BUNDLE_ROOT_EXPR
            if _DOTTED.fullmatch(node):  # a `_target_` or a class passed by name
                used = True
                return f"$@{pkg}." + node[len("common.") :]
            if node.startswith("$") and _COMMON_REF.search(node):
                used = True
                return _COMMON_REF.sub(f"@{pkg}.", node)
        return node

    out = walk(config)
    if used and isinstance(out, dict):
        out["imports"] = [s for s in out.get("imports", []) if s not in _LOADER_IMPORTS] + _LOADER_IMPORTS
        out[pkg] = _loader_expr(pkg)
    return out


_RELATIVE_MODULE = re.compile(r"\.[A-Za-z_][\w.]*")


def _module_file(dotted: str) -> Path | None:
    """``common.a.b...`` -> the file of its longest prefix that is a module of this package (or None)."""
    parts = dotted.split(".")[1:]
    for n in range(len(parts), -1, -1):
        base = PACKAGE_DIR.joinpath(*parts[:n])
        for f in (base.with_suffix(".py"), base / "__init__.py"):
            if f.is_file():
                return f
    return None


def _imported_files(f: Path) -> set[Path]:
    """The package's files ``f`` imports: relative imports anywhere in it (functions included), and the relative
    module names it hands to ``importlib.import_module`` (string constants such as ``".networks.swinunetr"``)."""
    import ast

    package = f.parent if f.name != "__init__.py" else f.parent
    found: set[Path] = set()

    def resolve(level: int, name: str | None) -> Path | None:
        base = package
        for _ in range(level - 1):
            base = base.parent
        dotted = "common." + ".".join(base.relative_to(PACKAGE_DIR).parts + tuple((name or "").split(".")))
        return _module_file(dotted.rstrip("."))

    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            hit = resolve(node.level, node.module)
            if hit is not None:
                found.add(hit)
            for alias in node.names:  # `from . import x` / `from .pkg import module`
                sub = resolve(node.level, f"{node.module}.{alias.name}" if node.module else alias.name)
                if sub is not None:
                    found.add(sub)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _RELATIVE_MODULE.fullmatch(node.value):
            hit = resolve(1, node.value[1:])
            if hit is not None:
                found.add(hit)
    return found


def runtime_files(configs: list) -> list[Path]:
    """The files of ``common`` that the parsed ``configs`` reach: every module a ``common.x`` name in them refers
    to, with what those modules import, and the ``__init__.py`` of each package on the way. Nothing else (the
    tools, other bundles' networks, the MONAI Label app) goes into a packaged bundle."""
    names: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            names.update(m.group(0) for m in _DOTTED.finditer(node))

    for c in configs:
        walk(c)
    todo = [f for f in map(_module_file, sorted(names)) if f is not None] + [PACKAGE_DIR / "__init__.py"]
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(_imported_files(f))
        for parent in f.relative_to(PACKAGE_DIR).parents:  # the packages holding it
            todo.append(PACKAGE_DIR / parent / "__init__.py")
    return sorted(seen)


def _vendor(dest: Path, configs: list) -> list[str]:
    """Copy :func:`runtime_files` of ``configs`` to ``dest``; return their paths relative to it."""
    files = runtime_files(configs)
    for f in files:
        rel = f.relative_to(PACKAGE_DIR)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest / rel)
    return [str(f.relative_to(PACKAGE_DIR)) for f in files]


# where a run reads and writes: an overlay's values for these stay out of the packaged configs
RUN_LOCATION_KEYS = ("bundle_root", "ckpt_dir", "ckpt_path", "output_dir", "dataset_dir", "datalist_file")


def _merged(config_file: Path, overlays: list[Path]) -> dict:
    """``config_file`` with every overlay value whose key it has (``a#b`` keys by their root), run locations left
    out: the packaged ``train.json`` / ``inference.json`` then build the overlay's network by themselves."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    for overlay in overlays:
        for k, v in json.loads(overlay.read_text(encoding="utf-8")).items():
            if k.split("#")[0] in parser.config and k not in RUN_LOCATION_KEYS:
                parser[k] = v
    return parser.config


def _check_weights(src: Path, ckpt: Path, overlays: list[Path]) -> None:
    """Stop, before anything is written, when the weights do not fit the network the packaged configs build."""
    from monai.bundle import ConfigParser

    from ..weights import load_weights, with_overlay_hint
    from ..workflow import network_args

    parser = ConfigParser()
    parser.read_config([str(src / "configs" / "inference.json"), *map(str, overlays)])
    parser["bundle_root"] = str(src)
    try:
        load_weights(parser.get_parsed_content("network_def"), ckpt, purpose="inference")
    except InputError as e:
        raise with_overlay_hint(e, ckpt, src, overlays, current=network_args(parser)) from None


def package_bundle(
    bundle: str | Path, out: str | Path, ckpt: str | Path | None = None, make_zip: bool = False, configs=()
) -> dict:
    """Write ``<out>/<bundle>/`` (and ``<out>/<bundle>.zip`` when ``make_zip``); return their paths.

    ``bundle`` is a name under ``bundles/`` or a bundle folder. ``configs``: overlays (for example the bundle's
    ``configs/demo.json``) merged into the packaged ``train.json`` and ``inference.json``, as ``monai.bundle run``
    would merge them, so the package builds the network its checkpoint holds. The checkpoint is checked against
    that network before anything is written. The folder is assembled in a temporary sibling and renamed into
    place, so an interrupted run never leaves a half-written bundle.
    """
    src = _bundle_folder(bundle)
    name = src.resolve().name
    pkg = vendored_name(name)
    overlays = [Path(c).expanduser() for c in configs]
    for c in overlays:
        if not c.is_file():
            raise InputError(f"{c}: config file not found", hint="give an overlay such as configs/demo.json")
    ckpt_path = Path(ckpt) if ckpt else src / "models" / "model.pt"
    if ckpt and not ckpt_path.is_file():
        raise InputError(f"{ckpt_path}: checkpoint not found")
    if ckpt_path.is_file():
        _check_weights(src, ckpt_path, overlays)
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        vendored = _assemble(tmp, src, pkg, overlays, ckpt_path if ckpt_path.is_file() else None)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        need = ckpt_path.stat().st_size if ckpt_path.is_file() else None
        if out_of_room(e, out, need):
            raise disk_full_error(target, need, "more than") from e
        raise
    paths = {
        "folder": str(target),
        "package": pkg,
        "vendored": vendored,
        "checkpoint": str(target / "models" / "model.pt") if ckpt_path.is_file() else None,
    }
    if make_zip:
        paths["zip"] = str(_zip(target, out / f"{name}.zip"))
    return paths


def _bundle_folder(bundle: str | Path) -> Path:
    """A bundle folder given, or the folder of a bundle named under ``bundles/``."""
    src = Path(bundle)
    if not (src / "configs").is_dir():
        src = REPO / "bundles" / str(bundle)
    if not (src / "configs" / "metadata.json").is_file():
        raise InputError(f"{src}: not a bundle folder (configs/metadata.json not found)")
    return src


def _assemble(tmp: Path, src: Path, pkg: str, overlays: list[Path], ckpt_path: Path | None) -> list[str]:
    """The packaged bundle in ``tmp``: its configs (overlays merged into ``train.json`` and ``inference.json``,
    ``_target_`` rewritten to the vendored package), docs, licence, the vendored code and the checkpoint. Returns
    the vendored modules."""
    (tmp / "configs").mkdir()
    packaged = []
    for f in sorted((src / "configs").iterdir()):
        if f.suffix == ".json":
            try:
                cfg = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise InputError(f"{f}: not valid JSON ({e})") from e
            if overlays and f.name in ("train.json", "inference.json"):
                cfg = _merged(f, overlays)
            packaged.append(cfg)
            text = json.dumps(rewrite_config(cfg, pkg), indent=4) + "\n"
            (tmp / "configs" / f.name).write_text(text, encoding="utf-8")
        elif f.is_file():
            shutil.copy2(f, tmp / "configs" / f.name)
    if (src / "docs").is_dir():
        shutil.copytree(src / "docs", tmp / "docs")
    if (REPO / "LICENSE").is_file():
        shutil.copy2(REPO / "LICENSE", tmp / "LICENSE")
    vendored = _vendor(tmp / pkg, packaged)
    if ckpt_path is not None:
        (tmp / "models").mkdir()
        shutil.copy2(ckpt_path, tmp / "models" / "model.pt")
    return vendored


def _zip(folder: Path, zip_path: Path) -> Path:
    """``folder`` as a zip holding ``<folder name>/...``, written atomically."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with atomic_path(zip_path, sum(p.stat().st_size for p in files), "up to") as tmp_zip:
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as z:
            for p in files:
                z.write(p, Path(folder.name) / p.relative_to(folder))
    return zip_path


@command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.tools.package", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle name under bundles/ (e.g. unetr_btcv) or a bundle folder")
    ap.add_argument("--out", default="dist", help="output folder (default: dist)")
    ap.add_argument(
        "--ckpt", default=None, help="checkpoint to ship as models/model.pt (default: the bundle's own, if any)"
    )
    ap.add_argument("--zip", action="store_true", help="also write <out>/<bundle>.zip")
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        help="overlay merged into the packaged configs, as with monai.bundle run (e.g. configs/demo.json)",
    )
    args = ap.parse_args(argv)
    paths = package_bundle(args.bundle, args.out, args.ckpt, args.zip, args.config)
    print(f"packaged {paths['folder']} (code vendored as {paths['package']})")
    if paths.get("checkpoint"):
        print(f"  checkpoint: {paths['checkpoint']}")
    else:
        print("  no checkpoint shipped: pass --ckpt, or the bundle runs with load_pretrain=false only")
    if paths.get("zip"):
        print(f"  zip: {paths['zip']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
