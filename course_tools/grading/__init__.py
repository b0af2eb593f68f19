"""Releases (``assign``) and autograding (``grade``): ``release``, ``autograde``, the
per-notebook ``worker`` with its ``sandbox`` (bubblewrap), its in-kernel ``kernel_probe`` and
its audit-hook ``guard``."""
