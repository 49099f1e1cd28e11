"""deepinv: a Poisson data fidelity that is right per sample, for its optimizers.

deepinv models photon noise as ``y = gain * Poisson(z / gain)`` (its
``PoissonNoise(gain)``; ``z = physics.A(x)``, for ``Ptychography`` the
far-field intensities). It has no nphotons: its scale is the detector gain,
and the physscale scale of that model is ``s = gain ** -0.5``
([`physscale.scale_from_gain`][physscale.scale_from_gain]): the counts are ``s**2 * y = y / gain``
and the rate ``s**2 * z + bkg``.

Its own ``PoissonLikelihood`` / ``PoissonLikelihoodDistance`` (0.5.0) compute
the ``tf`` form minus ``sum(k)`` with the same background meaning, but

- the ``-k * log(lam)`` term is summed over the *whole batch* and added to
  every sample, so per-sample values are wrong whenever the batch has more
  than one sample (the batch total is right);
- their ``grad`` is ``gain * (1 - k / lam)``, ``gain**2`` times the gradient
  of their own ``fn`` (``(1 - k / lam) / gain``).

The classes here have the same names and arguments (``gain``, ``bkg``,
``denormalize``) and plug in wherever deepinv's do (``DataFidelity``,
``deepinv.optim.optim_builder``, unfolded models): the value is
[`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll] with ``reduction="per_sample"`` (one
number per sample, shape ``(B,)``), and the gradient is its exact autograd
gradient. deepinv is imported when one of them is first used::

    from physscale.adapters.deepinv import PoissonLikelihood
    fidelity = PoissonLikelihood(gain=gain)   # instead of deepinv.optim.PoissonLikelihood

The proximal operator is deepinv's generic one (``Potential.prox``), not a
closed form.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from physscale.adapters._host import require_host
from physscale.adapters.conventions import Convention
from physscale.core.checks import check_option
from physscale.core.likelihood import FORMS, Form
from physscale.counts import scale_from_gain

# The two classes are made on first access (module __getattr__ below).
__all__ = [  # noqa: F822
    "CONVENTION",
    "PoissonLikelihood",
    "PoissonLikelihoodDistance",
    "poisson_nll_per_sample",
]

_INSTALL = "pip install deepinv==0.5.0"

CONVENTION = Convention(
    "deepinv",
    order="pred, obs",
    domain="intensity",
    reduction="per_sample",
    form="tf",
    eps="floor",
    scale="gain",
)
"""deepinv's data fidelity: ``fn(x, y)``, intensities ``gain`` times the expected counts, one value
per sample, eps a floor on the rate in counts."""


def poisson_nll_per_sample(
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    gain: float = 1.0,
    bkg: float | torch.Tensor = 0.0,
    denormalize: bool = True,
    form: Form = "tf",
    eps: float = 1e-12,
) -> torch.Tensor:
    """The Poisson negative log-likelihood of deepinv's noise model, one value per sample.

    Needs no deepinv: it is the function the classes below wrap.

    Args:
        z: ``(B, ...)`` clean measurements ``physics.A(x)`` in deepinv's
            units (the expected counts are ``z / gain``), real, >= 0.
        y: ``(B, ...)`` noisy measurements: ``gain * counts`` when
            ``denormalize`` (deepinv's ``PoissonNoise(gain, normalize=True)``,
            its default), the raw counts otherwise.
        gain: deepinv's gain, positive; the physscale scale is ``gain ** -0.5``.
        bkg: background counts per pixel added to the rate, >= 0.
        denormalize: whether ``y`` is ``gain * counts`` (True) or counts (False).
        form: ``"tf"`` (deepinv's value plus ``sum(k)``), ``"exact"``,
            ``"stirling"`` or ``"deviance"``; same gradients.
        eps: floor on the rate inside the logarithm, in counts.

    Returns:
        ``(B,)`` tensor, float32 (float64 for float64 inputs), in nats.

    Examples:
        >>> import torch
        >>> from physscale.adapters.deepinv import poisson_nll_per_sample
        >>> z = torch.full((3, 1, 4, 4), 2.0)   # the model's prediction
        >>> y = torch.full((3, 1, 4, 4), 2.0)   # the measurement
        >>> poisson_nll_per_sample(z, y).shape
        torch.Size([3])
    """
    return CONVENTION.loss(
        z,
        y,
        gain,
        form=form,
        background=bkg,
        eps=eps,
        count_scale=scale_from_gain(gain) if denormalize else 1.0,
    )


@functools.cache
def _classes() -> dict[str, type]:
    """Build the deepinv subclasses on first use (deepinv is imported here only)."""
    where = "physscale.adapters.deepinv"
    DataFidelity = require_host("deepinv.optim.data_fidelity", _INSTALL, where).DataFidelity  # noqa: N806
    Distance = require_host("deepinv.optim.distance", _INSTALL, where).Distance  # noqa: N806

    class PoissonLikelihoodDistance(Distance):  # type: ignore[misc,valid-type]
        """deepinv ``Distance``:
        [`poisson_nll_per_sample`][physscale.adapters.deepinv.poisson_nll_per_sample] of ``(x, y)``.

        Args: as [`poisson_nll_per_sample`][physscale.adapters.deepinv.poisson_nll_per_sample]
            (``gain``, ``bkg``,
        ``denormalize``, ``form``, ``eps``), checked here. ``grad`` is
        deepinv's autograd default: the exact gradient of ``fn``.
        """

        def __init__(
            self,
            gain: float = 1.0,
            bkg: float | torch.Tensor = 0.0,
            denormalize: bool = True,
            *,
            form: Form = "tf",
            eps: float = 1e-12,
        ) -> None:
            super().__init__()
            scale_from_gain(gain)  # refuses a bad gain now, not at the first step
            self.gain = gain
            self.bkg = bkg
            self.denormalize = bool(denormalize)
            self.form: Form = check_option(form, FORMS, "form")
            self.eps = eps

        def fn(self, x: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return poisson_nll_per_sample(
                x,
                y,
                gain=self.gain,
                bkg=self.bkg,
                denormalize=self.denormalize,
                form=self.form,
                eps=self.eps,
            )

    class PoissonLikelihood(DataFidelity):  # type: ignore[misc,valid-type]
        """deepinv ``DataFidelity``: ``fn(x, y, physics)`` is the per-sample
        Poisson NLL of ``y`` under ``physics.A(x)``; ``grad`` its exact gradient
        (``physics.A_vjp`` of the distance's autograd gradient).

        Args: ``gain``, ``bkg``, ``denormalize`` as deepinv's
        ``PoissonLikelihood``; ``form``, ``eps`` as
        [`poisson_nll_per_sample`][physscale.adapters.deepinv.poisson_nll_per_sample].
        """

        def __init__(
            self,
            gain: float = 1.0,
            bkg: float | torch.Tensor = 0.0,
            denormalize: bool = True,
            *,
            form: Form = "tf",
            eps: float = 1e-12,
        ) -> None:
            super().__init__()
            self.d = PoissonLikelihoodDistance(gain, bkg, denormalize, form=form, eps=eps)
            self.gain = gain
            self.bkg = bkg
            self.normalize = denormalize

    return {
        "PoissonLikelihoodDistance": PoissonLikelihoodDistance,
        "PoissonLikelihood": PoissonLikelihood,
    }


def __getattr__(name: str) -> Any:
    # PoissonLikelihood and PoissonLikelihoodDistance subclass deepinv's classes,
    # so they exist only once deepinv is imported: on first access.
    if name in ("PoissonLikelihood", "PoissonLikelihoodDistance"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
