"""Every command the README, the guides in docs/ and the bundles' docs show works as written.

A command is a line of a fenced code block, or an inline code span, that starts with ``python -m``, ``torchrun`` (or
``srun torchrun``), ``make`` or ``monailabel``. For each: the module of ``python -m`` exists; ``make`` names a target of
the Makefile; ``monai.bundle run`` names config files that exist and passes only keys of those configs (or of
``monai.bundle run`` itself); a command of ``common.tools`` passes only flags of its own parser. Beside the commands,
every flag the prose shows in code (```--invert labels```) must be a config key or a tool's flag. Renaming a key or a
flag without its docs fails here (test_a_renamed_flag_is_caught shows it).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
from functools import lru_cache

import pytest
from conftest import BUNDLES, REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(BUNDLES.glob("*/docs/README.md"))]
RUN_ARGS = {"config_file", "meta_file", "logging_file", "run_id", "init_id", "final_id", "tracking", "args_file"}
RUN_ARGS |= {"tracking_uri", "experiment_name", "run_name"}  # MONAI's tracking settings, merged in with --tracking
PLACEHOLDER = re.compile(r"<|/path/to|\$|\bdist/")
TOOLS = ("prepare", "synapse", "leaderboard", "ensemble", "export", "package", "benchmark")


def _fenced(text: str) -> list[str]:
    """The lines of the fenced code blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


def commands(text: str) -> list[str]:
    inline = re.findall(r"`((?:python -m|torchrun|make) [^`]+)`", text)
    return [c.strip() for c in _fenced(text) + inline if re.match(r"\s*(python -m|torchrun|srun|make|monailabel)\b", c)]


def _words(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    while words and words[-1] in ("&", ";"):
        words.pop()
    if words and words[0] == "srun":
        words = words[1:]
    if words and words[0] == "torchrun":  # torchrun's own options, then the module it runs
        words = ["python", *words[words.index("-m") :]]
    return words


@lru_cache(maxsize=None)
def tool_flags(module: str) -> frozenset[str]:
    """The options and positional choices of a command's parser, read from its ``--help``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    help_text = out.getvalue()
    choices = {c for group in re.findall(r"\{([\w,-]+)\}", help_text) for c in group.split(",")}
    return frozenset(re.findall(r"(?<![\w-])--[\w-]+", help_text)) | choices


@lru_cache(maxsize=None)
def config_keys(files: tuple[str, ...]) -> frozenset[str]:
    """Every id of the merged configs, nested ones as ``a#b``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files))
    keys: set[str] = set()

    def walk(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                keys.add(prefix + str(k))
                walk(v, f"{prefix}{k}#")

    walk(parser.get())
    return frozenset(keys)


@lru_cache(maxsize=None)
def every_known_flag() -> frozenset[str]:
    """Any config key of any bundle (as ``--key``), any tool's flag, ``monai.bundle run``'s own."""
    flags = {f"--{k}" for k in RUN_ARGS} | {"--app", "--studies", "--conf"}  # and MONAI Label's start_server
    for module in TOOLS:
        flags |= tool_flags(f"common.tools.{module}")
    for cfg in BUNDLES.glob("*/configs"):
        bases = [(cfg / "train.json",), (cfg / "inference.json", cfg / "evaluate.json")]
        overlays = [c for c in cfg.glob("*.json") if c.name not in ("metadata.json", "train.json", "inference.json")]
        for base in bases:
            for overlay in overlays:
                try:  # an overlay of the other base sets ids this one lacks
                    flags |= {f"--{k}" for k in config_keys(tuple(str(c) for c in (*base, overlay)))}
                except (KeyError, ValueError):
                    continue
    return frozenset(flags)


def _config_files(value: str) -> list[str]:
    value = value.strip()
    return [str(v) for v in json.loads(value.replace("'", '"'))] if value.startswith("[") else [value]


def check_command(command: str) -> list[str]:
    """What is wrong with one command as the docs write it (empty: it works as written)."""
    words = _words(command)
    if not words:
        return []
    if words[0] == "make":
        makefile = (REPO / "Makefile").read_text(encoding="utf-8")
        return [
            f"{command}: no make target {t!r}" for t in words[1:] if not re.search(rf"^{re.escape(t)}:", makefile, re.M)
        ]
    if words[0] == "monailabel":
        app = words[words.index("--app") + 1] if "--app" in words else ""
        return [] if (REPO / app).is_dir() else [f"{command}: no MONAI Label app {app!r}"]
    module, args = words[2], words[3:]
    if "<" in module:  # python -m common.tools.<name>
        return []
    if importlib.util.find_spec(module) is None:
        return [f"{command}: no module {module}"]
    if "..." in args:  # the rest of the command elided: the module is all there is to check
        return []
    if module == "monai.bundle":
        return _check_bundle_run(command, args)
    if module.startswith("common.tools."):
        known = tool_flags(module)
        return [f"{command}: {a} is not an option of {module}" for a in args if a.startswith("--") and a not in known]
    return []


def _check_bundle_run(command: str, args: list[str]) -> list[str]:
    if not args or args[0] != "run":
        return [f"{command}: monai.bundle is run as `monai.bundle run`"]
    options = {a[2:]: args[i + 1] if i + 1 < len(args) else "" for i, a in enumerate(args) if a.startswith("--")}
    files = _config_files(options.get("config_file", ""))
    if any(PLACEHOLDER.search(f) for f in files):
        return []  # a packaged bundle or a path of the user's: nothing here to check it against
    missing = [f for f in files if not (REPO / f).is_file()]
    if missing:
        return [f"{command}: no config file {f}" for f in missing]
    keys = config_keys(tuple(str(REPO / f) for f in files))
    return [f"{command}: --{k} is not a key of {', '.join(files)}" for k in options if k not in keys | RUN_ARGS]


def check_flags_in_prose(text: str) -> list[str]:
    """Flags shown in inline code outside commands (```--invert labels```): each a config key or a tool's flag."""
    spans = re.findall(r"`(--[\w#-]+)(?:[ =][^`]*)?`", text)
    return [f"{flag} is neither a config key nor a tool's flag" for flag in spans if flag not in every_known_flag()]


def problems_of(text: str) -> list[str]:
    return [p for c in commands(text) for p in check_command(c)] + check_flags_in_prose(text)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_in_the_docs_works_as_written(doc):
    text = doc.read_text(encoding="utf-8")
    assert commands(text) or doc.parent.name == "docs" and doc.name == "benchmarks.md", "no command found: parser?"
    assert problems_of(text) == []


def test_a_renamed_flag_is_caught():
    """The checks catch a renamed config key, a renamed tool flag, a renamed prose flag, a missing config file and a
    missing module, each on its own."""
    guide = (REPO / "docs" / "inference.md").read_text(encoding="utf-8")
    training = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    assert problems_of(guide) == [] and problems_of(training) == []
    for text, old, new in (
        (guide, "--output_dir /path/to/out", "--out_dir /path/to/out"),  # a config key of monai.bundle run
        (guide, "export onnx --bundle", "export onnx --bundle-name"),  # a tool's flag
        (guide, "`--invert labels`", "`--inversion labels`"),  # a flag in the prose
        (training, "configs/card_synapse.json", "configs/card_synapse8.json"),  # a config file
        (training, "python -m common.tools.prepare", "python -m common.tools.prep"),  # a module
    ):
        assert old in text, old
        assert problems_of(text.replace(old, new)), f"renaming {old!r} to {new!r} went unnoticed"


def test_the_readme_is_a_landing_page():
    """The two commands first, at most 8 KB: the rest lives in the guides it links."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first = _fenced(text)[:2]
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"], first
    assert len(text.encode("utf-8")) <= 8000
    for guide in ("training", "inference", "evaluation", "clusters", "development", "benchmarks"):
        assert f"(docs/{guide}.md" in text, guide
