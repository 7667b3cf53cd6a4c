"""Old path ``ava.utils.fileloc``: directory helpers."""

from ava.utils.fileio import mkdir_p

__all__ = ["mkdir_p"]
