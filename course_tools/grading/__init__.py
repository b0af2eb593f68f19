"""Releases (``assign``) and autograding (``grade``): ``release``, ``autograde`` and the
sandboxed ``worker`` with its ``guard``."""
