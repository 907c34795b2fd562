"""Command modules whose command spans layers (a runtime step and its training), kept above both.

Each provides ``add_arguments(parser)`` and ``run_cli(args) -> int`` for :mod:`facekit.cli`.
"""
