"""The offline tools, apart from the runtime the bundle configs call: each is a command.

    python -m common.tools.prepare      write a BTCV datalist (named splits) for a dataset folder
    python -m common.tools.synapse      convert the TransUNet authors' Synapse files into BTCV's layout
    python -m common.tools.leaderboard  score several bundles (or an out-of-fold cv5 run) on the same cases
    python -m common.tools.export       TorchScript / ONNX, checked against the eager network
    python -m common.tools.package      a self-contained bundle folder that runs without this project
    python -m common.tools.benchmark    timings, agreement and training throughput (docs/benchmarks.md)

``stats`` (paired comparisons) and ``anchors`` (published figures) serve the leaderboard. A packaged bundle
carries none of this: only the runtime modules its configs reach.
"""
