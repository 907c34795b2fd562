"""Entry point for ``python -m facekit``."""

from facekit.cli import main

raise SystemExit(main())
