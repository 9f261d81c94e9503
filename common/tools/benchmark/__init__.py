"""Benchmark suite for every bundle: end-to-end inference, training throughput, scaling (not part of the tests).

    python -m common.tools.benchmark [--bundle unetr_btcv ...] [--parts inference,training,scaling] [--out bench]
    python -m common.tools.benchmark --smoke --out /tmp/bench      # tiny inputs: checks the suite, figures meaningless

In one run on one machine, for each bundle:

- **Efficiency** (``efficiency``): the machine's own peak in the same run (a 4096^2 matrix product and a 3D
  convolution, in fp32 and in bf16 on a CPU / fp16 on a GPU) and each network's forward on one inference batch
  (3D: ``sw_batch_size`` windows; 2D: ``slice_batch`` slices): FLOPs (torch's counter), achieved GFLOP/s and the
  share of the peak.
- **Inference end to end** on the real CT sample of ``../shared/data`` (when present) and a BTCV-size CT phantom
  (512 x 512 x 150 at 0.8 x 0.8 x 2.5 mm), from the file to
  the written label file, split into load / preprocess / network / postprocess / write, with peak RAM (and
  peak GPU memory on CUDA). Every path is the bundle's own ``inference.json`` with switches set
  (:func:`variants`): the baseline is the model-zoo recipe for 3D bundles (CPU transforms, fp32, softmax
  probabilities inverted with bilinear interpolation before the argmax, stitching on the input's device) and
  the papers' per-slice path for 2D bundles. Each path reports its speed-up over the baseline and the share
  of voxels whose label agrees with the baseline's.
- **Training throughput** of the bundle's own step (network, loss, optimizer; AMP on CUDA) at its default
  batch and crop settings, with the time waiting for data separated from the model step: the bundle's
  pipeline (cached deterministic transforms, random transforms per sample) against a plain ``DataLoader``
  with all transforms on the CPU per sample (3D: ``monai.data.Dataset``; 2D: the papers' one file per slice,
  zoomed with SciPy per sample).
- **MT-UNet module stages** (``mtm``): each official mixed-transformer-module stage, the vectorised form of the
  network against the loop reference kept in the tests.
- **Dataset** (``dataset``): the bundle's own inference (``evaluator.run()``, its DataLoader with worker processes)
  on a folder of three BTCV-size phantoms, default path and reduced precision: seconds per volume and the share
  of the wall time outside the forward passes, with loading overlapped by the workers as in real use.
- **Fitted** (``fitted``, not in the default parts: it trains): the demo's network (``configs/demo.json``) trained
  on the real CT sample itself through the bundle's own ``train.json`` (``--fit-epochs``, :data:`FIT_EPOCHS` by
  default), then every inference path on that CT with those weights. The demos learn on generated phantoms,
  so on the real CT they predict fragments; weights fitted to the CT predict organ-shaped labels, as a model
  trained on BTCV would, and the agreement of the paths is measured on such a prediction (with its Dice against
  the CT's labels). The weights are kept in ``<out>/fitted/<bundle>/model.pt`` and reused by later runs with
  the same settings (another epoch count, override or CT fits again).
- **Levers** (``levers``, not in the default parts: it trains when weights are missing): what test-time
  augmentation, connected-component cleanup and ensembles do to mean Dice, HD95 and time, on demo-trained and
  fitted weights.
- **Scaling**: the fastest path at three volume sizes (256 x 256 x 80, 512 x 512 x 150, 512 x 512 x 300 at
  the BTCV spacing, so the field of view grows): seconds, peak memory, and where sliding-window outputs were
  stitched (``stitch="auto"`` moves it to the CPU when the GPU would run out).

Weights: ``--ckpt bundle=path``, else the bundle's demo checkpoint (``bundles/<b>/demo/models/model.pt``) when
it fits the bundle's network, else random (timings do not depend on weights; agreement figures do, and say
which were used). The ``agreement`` part times the paths on the demo's trained network, on the same volumes, to
give each switch's agreement on trained weights: in the demo's configuration where the demo trained a reduced
network (every ``demo.json`` but Swin-Unet's), else in the bundle's own.
Results: ``<out>/suite.md`` and ``<out>/suite.json`` with the machine, thread count, library versions, date and
command; ``--doc docs/benchmarks.md`` also makes the report the collection's speed document (the bundle docs link
to it and hold no timings of their own).

The package: one module per part (``efficiency``, ``inference`` with ``agreement``, ``dataset``, ``fitted``,
``levers``, ``training``, ``scaling``, ``mtm``), each measuring and rendering its own section; ``core`` below them all
(machine, memory, phantoms, a bundle's inference paths, tables, the one way it trains); ``runner`` (the order of the
parts, the report, the document) and ``cli`` above.
"""

from .cli import main
from .core import FIT_EPOCHS, PeakMemory, machine_info, variants
from .runner import merge_doc, render, suite

__all__ = ["PeakMemory", "machine_info", "variants", "suite", "render", "merge_doc", "main", "FIT_EPOCHS"]
