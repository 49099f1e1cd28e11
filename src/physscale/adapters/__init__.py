"""Thin adapters to host ptychography codes, one module per code.

Each module declares one code's conventions and imports that code lazily
(none is a dependency of physscale); no adapter repeats the math of the core.

- [`physscale.adapters.ptychopinn`][physscale.adapters.ptychopinn]: PtychoPINN's PyTorch port
(``ptycho_torch``).
- [`physscale.adapters.deepinv`][physscale.adapters.deepinv]: deepinv's ptychography physics and
Poisson models.
- [`physscale.adapters.ptychi`][physscale.adapters.ptychi]: pty-chi's reconstructors, which work in
raw counts.
- [`physscale.adapters.cdtools`][physscale.adapters.cdtools]: cdtools' models and reconstructors
(its argument order).
- [`physscale.adapters.ptyrad`][physscale.adapters.ptyrad]: PtyRAD's solver and its
``CombinedLoss``.
- [`physscale.adapters.conventions`][physscale.adapters.conventions]: how each of them calls a
Poisson loss,
  declared once per host (a [`Convention`][physscale.adapters.conventions.Convention]);
  a host physscale does not know needs only its own (docs/interop/your-host.md).
"""
