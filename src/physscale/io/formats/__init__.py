"""One reader per file format, behind the one pattern-source interface.

- `base`: [`ArrayInfo`][physscale.io.formats.base.ArrayInfo],
  the `PatternSource` interface, telling a
  format by its first bytes, and the checks every format shares.
- `npy`, `npz`,
  `hdf5`: each format's ``list_arrays``,
  ``array_info`` and ``open_source``, and its ``PatternSource``.

`physscale.io.readers` picks the format of a file and is what the rest of
physscale calls. A new format is one more module here with those three
functions, and one line in ``readers``.
"""
