"""Regenerate tests/golden/tf_reference_v1.npz: TensorFlow's outputs on fixed inputs.

The fixture lets ``tests/test_golden.py`` check physscale against TensorFlow
without TensorFlow installed. Every output is computed here by TensorFlow
ops (the expressions in ``tests/parity/_tfref.py``, the same ones the TF
parity suite uses), never by physscale.

Usage (needs ``pip install physscale[parity]``)::

    python scripts/make_golden_vectors.py            # rewrites the fixture
    python scripts/make_golden_vectors.py --check    # regenerate in memory, compare

Layout of the file (``np.load(path, allow_pickle=False)``; keys are flat):

- ``format_version`` (int, 0-d): bump when the layout changes; the tests refuse
  versions they do not know. ``tf_version``, ``keras_version``, ``seed``.
- ``derive/c{1,4,9}/``: ``x`` (NHWC float32), ``nphotons``, ``scale_f32``
  (TF float32), ``scale_f64`` (the same TF expression in float64 ops).
- ``closed/``: ``x_raw`` (NHWC sqrt(counts)), ``nphotons``, ``x_norm_f32`` (TF
  normalization), ``factor_f64``, ``closed_f32``, ``derived_on_norm_f32``.
- ``nll/<case>/``: inputs ``pred``, ``obs`` (NHWC float32), ``scale``,
  ``domain``, ``background``, optional ``mask``; for each form,
  ``<form>/<reduction>`` (TF float64 ops), ``<form>/<reduction>_atol`` (the
  documented floor), ``<form>/mean_keras`` (compiled Keras model, float32
  reduction) and ``<form>/grad_<reduction>`` with ``grad_<reduction>_atol``.
- ``scaler/``: the tf.Variable log-scale construction and one SGD step;
  ``scaler_nll/``: the same log-scale learning through TF training's
  ``log_poisson_loss`` against fixed counts ``x_phys**2``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "golden" / "tf_reference_v1.npz"
FORMAT_VERSION = 1
SEED = 20240611

# The NLL cases: (name, shape NHWC, scale, max counts, spread, domain, background, mask).
NLL_CASES: list[tuple[str, tuple[int, int, int, int], float, float, float, str, float, str]] = [
    ("low_counts", (2, 3, 5, 4), 10.0, 100.0, 0.3, "amplitude", 0.0, "none"),
    ("high_counts", (2, 3, 5, 4), 1e4, 1e7, 1e-3, "amplitude", 0.5, "full"),
    ("intensity", (3, 4, 4, 1), 300.0, 1e4, 0.1, "intensity", 0.0, "pattern"),
    ("dark", (2, 3, 3, 9), 1.0, 5.0, 1.0, "amplitude", 0.0, "none"),
    # Whole Poisson counts (k = 0, 1, 2 ... exactly: scale 1, intensity domain).
    ("whole_counts", (2, 4, 4, 4), 1.0, 6.0, 0.5, "intensity", 0.0, "none"),
]
GRAD_REDUCTIONS = ("mean", "sum", "per_sample")


def _tf_modules() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError as exc:
        sys.exit(
            f"make_golden_vectors: TensorFlow is needed ({exc}); pip install physscale[parity]"
        )
    tf.config.set_visible_devices([], "GPU")
    sys.path.insert(0, str(REPO / "tests"))
    from parity import _tfref

    return tf, _tfref


def build() -> dict[str, np.ndarray]:
    """Compute every fixture array with TensorFlow."""
    tf, ref = _tf_modules()
    import keras

    rng = np.random.default_rng(SEED)
    out: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION),
        "tf_version": np.array(tf.__version__),
        "keras_version": np.array(keras.__version__),
        "seed": np.array(SEED),
    }

    # §1: derived scale on NHWC data; H=3 < C in two cases (a guessed channel axis fails).
    for c, nphotons in ((1, 1e3), (4, 1e9), (9, 3.7e11)):
        x = np.sqrt(ref.pattern_stack(rng, (4, 3, 5, c), dark=0.3))
        x = (x * math.sqrt(60.0 / ((x**2).sum() / (4 * c)))).astype(np.float32)
        key = f"derive/c{c}/"
        out[key + "x"] = x
        out[key + "nphotons"] = np.array(nphotons)
        out[key + "scale_f32"] = np.array(ref.tf_scale_nphotons(x, nphotons))
        out[key + "scale_f64"] = np.array(ref.tf_scale_nphotons(x, nphotons, tf.float64))

    # §1: the closed form after TF-style normalization of raw count amplitudes.
    n, nphotons = 8, 1e6
    pattern = ref.pattern_stack(rng, (3, n, n, 4), dark=0.2)
    x_raw = np.sqrt(rng.poisson(2e5 * pattern / pattern.max())).astype(np.float32)
    x_norm = ref.tf_normalize_amplitudes(x_raw)
    mean_sum = tf.reduce_mean(tf.reduce_sum(tf.constant(x_raw, tf.float64) ** 2, axis=(1, 2)))
    out["closed/x_raw"] = x_raw
    out["closed/nphotons"] = np.array(nphotons)
    out["closed/x_norm_f32"] = x_norm
    out["closed/factor_f64"] = np.array(math.sqrt((n / 2) ** 2 / float(mean_sum)))
    out["closed/closed_f32"] = np.array(ref.tf_closed_form(nphotons, n))
    out["closed/derived_on_norm_f32"] = np.array(ref.tf_scale_nphotons(x_norm, nphotons))

    # §3: each form x reduction, Keras' mean, and gradients wrt pred.
    for name, shape, scale, max_counts, spread, domain, background, mask_kind in NLL_CASES:
        case = ref.nll_case(
            rng,
            shape,
            scale=scale,
            max_counts=max_counts,
            spread=spread,
            domain=domain,
            background=background,
            mask_kind=mask_kind,
            dark=0.3,
            integer_counts=name == "whole_counts",
        )
        key = f"nll/{name}/"
        out[key + "pred"] = case.pred
        out[key + "obs"] = case.obs
        out[key + "scale"] = np.array(case.scale)
        out[key + "domain"] = np.array(case.domain)
        out[key + "background"] = np.array(case.background)
        if case.mask is not None:
            out[key + "mask"] = case.mask
        for form in ref.FORMS:
            fkey = f"{key}{form}/"
            for reduction in ref.REDUCTIONS:
                out[fkey + reduction] = ref.tf_nll(case, form, reduction, tf.float64)
                out[fkey + reduction + "_atol"] = np.asarray(ref.loss_floor(case, form, reduction))
            if case.mask is None:
                out[fkey + "mean_keras"] = np.array(
                    ref.keras_compiled_mean(
                        case.pred,
                        case.obs,
                        ref.keras_loss(case.scale, case.domain, case.background, form),
                        batch_size=max(1, shape[0] - 1),
                    )
                )
            for reduction in GRAD_REDUCTIONS:
                out[fkey + "grad_" + reduction] = ref.tf_nll_grad(case, form, reduction, tf.float64)
                out[fkey + "grad_" + reduction + "_atol"] = ref.grad_floor(case, reduction)

    # §2: IntensityScaler and one SGD step on a trainable log-scale.
    scale0, weight, bias = 250.0, 1.3, 0.2
    x_phys = (scale0 * np.sqrt(ref.pattern_stack(rng, (2, 4, 4, 4), dark=0.2))).astype(np.float32)
    probe = ref.tf_scaler_step(x_phys, scale0, weight, bias, lr=0.0)
    lr = 0.1 / abs(probe.grad_log_scale)
    step = ref.tf_scaler_step(x_phys, scale0, weight, bias, lr=lr)
    e = math.exp(step.log_scale_before)
    terms = (
        2
        * np.abs(step.denormalized)
        * (weight * np.abs(step.normalized) * e + np.abs(step.denormalized))
    )
    out.update(
        {
            "scaler/x_phys": x_phys,
            "scaler/scale0": np.array(scale0),
            "scaler/weight": np.array(weight),
            "scaler/bias": np.array(bias),
            "scaler/lr": np.array(lr),
            "scaler/normalized": step.normalized,
            "scaler/denormalized": step.denormalized,
            "scaler/loss": np.array(step.loss),
            "scaler/grad_log_scale": np.array(step.grad_log_scale),
            "scaler/grad_atol": np.array(ref.FLOOR_FACTOR * float(terms.mean())),
            "scaler/log_scale_before": np.array(step.log_scale_before),
            "scaler/log_scale_after": np.array(step.log_scale_after),
        }
    )
    # §2 + §3: the log-scale learning through TF training's Poisson loss (fixed counts).
    probe = ref.tf_scaler_step(x_phys, scale0, weight, bias, lr=0.0, loss_kind="poisson")
    lr = 0.1 / abs(probe.grad_log_scale)
    step = ref.tf_scaler_step(x_phys, scale0, weight, bias, lr=lr, loss_kind="poisson")
    lam = step.denormalized.astype(np.float64) ** 2
    k = x_phys.astype(np.float64) ** 2
    terms = (1 + k / lam) * 2 * np.sqrt(lam) * (weight * np.abs(step.normalized) * e + np.sqrt(lam))
    out.update(
        {
            "scaler_nll/lr": np.array(lr),
            "scaler_nll/loss": np.array(step.loss),
            "scaler_nll/loss_atol": np.array(
                ref.FLOOR_FACTOR * float(np.mean(lam + np.abs(k * np.log(lam))))
            ),
            "scaler_nll/grad_log_scale": np.array(step.grad_log_scale),
            "scaler_nll/grad_atol": np.array(ref.FLOOR_FACTOR * float(terms.mean())),
            "scaler_nll/log_scale_before": np.array(step.log_scale_before),
            "scaler_nll/log_scale_after": np.array(step.log_scale_after),
        }
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--check", action="store_true", help="compare a fresh build with --out instead of writing"
    )
    args = parser.parse_args(argv)
    arrays = build()
    if args.check:
        with np.load(args.out, allow_pickle=False) as old:
            keys_differ = set(old.files) ^ set(arrays)
            changed = []
            for k in sorted(set(old.files) & set(arrays)):
                a, b = old[k], arrays[k]
                if k.endswith("_version"):
                    continue
                same = (
                    np.allclose(a, b, rtol=1e-6, atol=0.0)
                    if a.dtype.kind == "f"
                    else np.array_equal(a, b)
                )
                if not same:
                    changed.append(k)
        if keys_differ or changed:
            print(f"fixture differs: keys {sorted(keys_differ)}, values {changed}")
            return 1
        print(f"{args.out}: matches a fresh TensorFlow build ({len(arrays)} arrays)")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)  # type: ignore[arg-type]
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(arrays)} arrays)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
