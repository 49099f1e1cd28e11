"""One reader per file format, behind the one pattern-source interface.

- :mod:`~physscale.io.formats.base`: :class:`~physscale.io.formats.base.ArrayInfo`,
  the :class:`~physscale.io.formats.base.PatternSource` interface, telling a
  format by its first bytes, and the checks every format shares.
- :mod:`~physscale.io.formats.npy`, :mod:`~physscale.io.formats.npz`,
  :mod:`~physscale.io.formats.hdf5`: each format's ``list_arrays``,
  ``array_info`` and ``open_source``, and its ``PatternSource``.

:mod:`physscale.io.readers` picks the format of a file and is what the rest of
physscale calls. A new format is one more module here with those three
functions, and one line in ``readers``.
"""
