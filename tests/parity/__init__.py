"""Property tests comparing physscale with TensorFlow computing the reference in TF ops.

Run with TensorFlow installed (``pip install physscale[parity]``); without it
they skip, unless ``PHYSSCALE_REQUIRE_TF=1`` is set (CI), which makes a
missing TensorFlow a collection error.
"""
