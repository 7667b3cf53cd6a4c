"""Helpers under the old import paths (``ava.utils.fileloc``, ...)."""
