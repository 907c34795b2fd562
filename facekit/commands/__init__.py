"""Command modules of ``python -m facekit``, one per command, kept above every layer they use.

Each provides ``add_arguments(parser)`` and ``run_cli(args) -> int`` for :mod:`facekit.cli`.
"""
