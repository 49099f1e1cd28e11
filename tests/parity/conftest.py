"""TensorFlow for the parity suite: imported once, CPU only, quiet, two threads.

Without TensorFlow the test modules skip (``_tfref`` raises the module-level
skip); with ``PHYSSCALE_REQUIRE_TF=1`` (set by ``.ci/run``) a missing
TensorFlow is a collection error naming the import failure instead.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_TF = os.environ.get("PHYSSCALE_REQUIRE_TF", "") == "1"

# Before the import: TF reads these once. Level 3 silences its C++ logging;
# oneDNN's reordered reductions are turned off so float32 results are stable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

try:
    import tensorflow as tf
except ImportError as exc:  # pragma: no cover - depends on the environment
    if REQUIRE_TF:
        pytest.fail(
            f"PHYSSCALE_REQUIRE_TF=1 but TensorFlow cannot be imported ({exc!r}); "
            f"install it with: pip install 'physscale[parity]'",
            pytrace=False,
        )
    tf = None  # the test modules skip themselves via _tfref

if tf is not None:
    # CPU only, and few threads: torch shares the (small) machine in the same process.
    tf.config.set_visible_devices([], "GPU")
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(2)
    except RuntimeError:  # pragma: no cover - the runtime was started before us
        pass
    tf.get_logger().setLevel("ERROR")
