"""Files in and out: safe metadata, streaming readers, checkpoints and bundles.

Nothing here executes code from a file: no unrestricted pickle, and
``torch.load`` only with ``weights_only=True``.
"""

from physscale.io.bundle import Bundle, load_bundle, save_bundle
from physscale.io.checkpoint import record_from_checkpoint, record_to_checkpoint
from physscale.io.dataset import (
    DATA_SUFFIXES,
    DerivedFiles,
    FilesProgress,
    derive_files,
    expand_paths,
)
from physscale.io.metadata import read_metadata, write_metadata
from physscale.io.nexus import LinkInfo, list_links
from physscale.io.normalize import NormalizedFiles, NormalizeProgress, normalize_files
from physscale.io.readers import (
    ArrayInfo,
    array_info,
    example_dataset_path,
    iter_patterns,
    list_arrays,
)

__all__ = [
    "DATA_SUFFIXES",
    "ArrayInfo",
    "Bundle",
    "DerivedFiles",
    "FilesProgress",
    "LinkInfo",
    "NormalizeProgress",
    "NormalizedFiles",
    "array_info",
    "derive_files",
    "example_dataset_path",
    "expand_paths",
    "iter_patterns",
    "list_arrays",
    "list_links",
    "load_bundle",
    "normalize_files",
    "read_metadata",
    "record_from_checkpoint",
    "record_to_checkpoint",
    "save_bundle",
    "write_metadata",
]
