"""``python -m common.tools.benchmark``."""

from .cli import main

raise SystemExit(main())
