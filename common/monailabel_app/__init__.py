"""The MONAI Label app serving the BTCV bundles: ``monailabel start_server --app <this folder> ...``.

``main.py`` imports MONAI Label, which is not a dependency of the project (it needs torchvision and so the
CUDA build of torch): install it in its own environment, see the README's "MONAI Label" section.
"""

from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
