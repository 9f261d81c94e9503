"""The running bundle workflow, and what a bundle's configuration says of its network: what the runtime (the helpers
of ``common.bundle``) and the weights (``common.weights``) both read, so neither needs the other for it."""

from __future__ import annotations

__all__ = ["WORKFLOW_EXPR", "running_workflow", "network_args", "RUNTIME_ARGS", "differing_args"]

# The one walk up the call stack to the running ConfigWorkflow (``monai.bundle run``, or Python code using
# ConfigWorkflow), as a standard-library expression: the project evaluates it here, and a packaged bundle's
# configs embed it (``common.tools.package``), since their vendored code cannot be imported before the bundle's
# folder is known. ``monai`` is the only name it needs.
WORKFLOW_EXPR = (
    "next((w for w in (fi.frame.f_locals.get('self') for fi in __import__('inspect').stack(0)) "
    "if isinstance(w, monai.bundle.ConfigWorkflow)), None)"
)


def running_workflow():
    """The ``ConfigWorkflow`` on the call stack, or ``None`` (:data:`WORKFLOW_EXPR`)."""
    import monai.bundle

    return eval(WORKFLOW_EXPR, {"monai": monai})  # noqa: S307 - a constant expression of this module


def _plain(value):
    """A config value as plain data (what ``torch.load(weights_only=True)`` reads back): tuples become lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def network_args(parser) -> dict:
    """The resolved ``network_def`` of a bundle config: its target and every argument, as plain data. Resolved in a
    copy of the config, so a parser that already built the network (and caches it) is left as it is."""
    import copy

    from monai.bundle import ConfigParser

    fresh = ConfigParser(copy.deepcopy(parser.get()))
    return _plain(fresh.get_parsed_content("network_def", instantiate=False).get_config())


# network_def arguments that choose how the same network runs, not which network it is
RUNTIME_ARGS = {
    "mode",  # the slice-wise mode of checkpoints written before the per-slice loop left the bundles
    "slice_batch",
    "tta",
    "autocast",
    "compile",
    "progress",
    "output",
    "resize",
    "channels_last",
    "use_checkpoint",
    "use_flash_attention",
}


def differing_args(recorded: dict, current: dict) -> list[str]:
    """``name recorded (this configuration: current)`` for every network argument that differs (run-time switches
    such as the slice batch or autocast are not the network's and are left out)."""
    keys = sorted((set(recorded) | set(current)) - RUNTIME_ARGS)
    return [
        f"{k} {recorded.get(k)!r} (this configuration: {current.get(k)!r})"
        for k in keys
        if recorded.get(k) != current.get(k)
    ]
