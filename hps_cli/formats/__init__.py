"""Input formats of ``hps convert``: each module opens one format as ``SourceTable`` s.

``detect.open_input(path, fmt, options)`` picks the format (from what is on disk, or forced)
and returns an ``Input``: its tables and the files it deliberately skipped.
"""

from .base import Chunk, RandomAccess, RawArray, SkippedFile, SourceTable
from .detect import FORMATS, Input, OpenOptions, detect_format, open_input

__all__ = [
    "Chunk",
    "RandomAccess",
    "RawArray",
    "SkippedFile",
    "SourceTable",
    "FORMATS",
    "Input",
    "OpenOptions",
    "detect_format",
    "open_input",
]
