"""Thin adapters to host ptychography codes, one module per code.

Each module translates one code's conventions to physscale's and imports that
code lazily (none is a dependency of physscale); no adapter repeats the math
of the core.

- :mod:`physscale.adapters.ptychopinn`: PtychoPINN's PyTorch port (``ptycho_torch``).
- :mod:`physscale.adapters.deepinv`: deepinv's ptychography physics and Poisson models.
- :mod:`physscale.adapters.ptychi`: pty-chi's reconstructors, which work in raw counts.
"""
