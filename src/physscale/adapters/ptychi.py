"""pty-chi: a count-domain Poisson loss for its autodiff reconstructors.

pty-chi works in raw detector counts. Its AD reconstructors call their loss as
``loss_fn(y_pred, y_true)``: ``y_pred`` the predicted far-field intensities
(expected counts), ``y_true`` the measured counts, either full
``(batch, H, W)`` tensors or the 1-D vectors ``y[mask]`` of the valid pixels.
Its built-in ``LossFunctions.POISSON`` is ``torch.nn.PoissonNLLLoss()`` with
the default ``log_input=True``, which reads the intensities as *log*-rates
(``exp(y_pred) - y_true * y_pred``): inf or NaN on count data.

[`PoissonLoss`][physscale.adapters.ptychi.PoissonLoss] is the correct likelihood on counts, the
count-native
use of [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll] (``scale=1``,
``domain="intensity"``: the rate is ``y_pred``, the counts ``y_true``), with
pty-chi's call signature. [`use_poisson_loss`][physscale.adapters.ptychi.use_poisson_loss] puts it
into a built task
or reconstructor. pty-chi itself is imported only by
[`use_poisson_loss`][physscale.adapters.ptychi.use_poisson_loss].

Feed pty-chi the counts, not normalized amplitudes: its step sizes are tuned
for counts (on normalized data its ePIE-style steps grow by ``s**2``). Use
[`physscale.normalize_counts`][physscale.normalize_counts] for the network side of a hybrid code,
and
keep the counts for pty-chi.
"""

from __future__ import annotations

from typing import Any

import torch

from physscale.adapters._host import require_host
from physscale.adapters.conventions import Convention
from physscale.core.checks import check_option
from physscale.core.likelihood import FORMS, REDUCTIONS, Form, Reduction
from physscale.errors import StateError

__all__ = ["CONVENTION", "PoissonLoss", "use_poisson_loss"]

_INSTALL = "pip install ptychi==2.2.0"

CONVENTION = Convention(
    "pty-chi",
    order="pred, obs",
    domain="intensity",
    reduction="mean",
    form="tf",
    eps="floor",
    scale="one",
)
"""pty-chi's ``loss_fn(y_pred, y_true)``: photon counts (scale 1), a mean over every element, eps a
floor on the rate in counts."""


class PoissonLoss(torch.nn.Module):
    """Poisson negative log-likelihood of measured counts, as pty-chi's ``loss_fn``.

    ``forward(y_pred, y_true)`` is
    ``scaled_poisson_nll(y_pred, y_true, 1.0, domain="intensity", ...)``:
    the rate is ``y_pred + background`` and the counts ``y_true``, both in
    photons. It holds no tensors (no parameters, no buffers).

    Args:
        form: ``"tf"`` (default: ``lam - k*log(lam)``, what
            ``torch.nn.PoissonNLLLoss(log_input=False)`` computes, up to its
            ``eps=1e-8`` inside the log), ``"exact"`` (``-log Poisson(k; lam)``),
            ``"stirling"`` or ``"deviance"`` (0 at a perfect fit; best at high
            counts). The forms differ by terms constant in ``y_pred``: same
            gradients.
        reduction: ``"mean"`` (default, over every element, like pty-chi's
            built-in losses, so its step sizes keep their meaning), ``"sum"``,
            ``"none"`` or ``"per_sample"``.
        background: expected background counts per pixel added to the rate, a
            number >= 0 (or a tensor broadcastable to ``y_pred``).
        eps: floor on the rate inside the logarithm, in counts (see
            [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll]).

    Shapes: ``y_pred`` and ``y_true`` the same shape, any rank >= 1 (1-D for
    pty-chi's masked call); real floating, >= 0. Returns a 0-d float32 tensor
    (float64 for float64 inputs) for ``"mean"``/``"sum"``.
    """

    def __init__(
        self,
        *,
        form: Form = "tf",
        reduction: Reduction = "mean",
        background: float | torch.Tensor = 0.0,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.form: Form = check_option(form, FORMS, "form")
        self.reduction: Reduction = check_option(reduction, REDUCTIONS, "reduction")
        self.background = background
        self.eps = eps
        if not isinstance(background, torch.Tensor):
            # Check eps and a scalar background now, with the core's own checks and
            # messages, rather than at the first minibatch of a reconstruction.
            one = torch.ones(1)
            CONVENTION.loss(one, one, background=background, eps=eps)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """The loss of predicted intensities ``y_pred`` against measured counts ``y_true``."""
        return CONVENTION.loss(
            y_pred,
            y_true,
            form=self.form,
            reduction=self.reduction,
            background=self.background,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return f"form={self.form!r}, reduction={self.reduction!r}, counts (scale 1)"


def use_poisson_loss(task_or_reconstructor: Any, **loss_options: Any) -> PoissonLoss:
    """Make a pty-chi autodiff reconstruction minimize
    [`PoissonLoss`][physscale.adapters.ptychi.PoissonLoss].

    Sets the reconstructor's ``loss_function`` (what its ``run_minibatch``
    and optimizer steps call) and returns the loss. pty-chi's displayed loss
    (``displayed_loss_function``, MSE of square roots by default) is left
    as configured.

    Args:
        task_or_reconstructor: a built ``ptychi.api.task.PtychographyTask``
            (its ``.reconstructor`` is used) or an autodiff reconstructor.
        **loss_options: passed to [`PoissonLoss`][physscale.adapters.ptychi.PoissonLoss].

    Raises:
        ModuleNotFoundError: pty-chi is not installed (says what to install).
        StateError: not an autodiff reconstructor (LSQML, PIE, DM... use
            their own noise models and never call a ``loss_function``).
    """
    ad_general = require_host(
        "ptychi.reconstructors.ad_general", _INSTALL, "physscale.adapters.ptychi.use_poisson_loss"
    )
    AutodiffReconstructor = ad_general.AutodiffReconstructor  # noqa: N806

    reconstructor = getattr(task_or_reconstructor, "reconstructor", task_or_reconstructor)
    if not isinstance(reconstructor, AutodiffReconstructor):
        raise StateError(
            f"use_poisson_loss needs a pty-chi autodiff reconstructor (AutodiffPtychography "
            f"options), got {type(reconstructor).__name__}; the analytic reconstructors "
            f"(LSQML, PIE, DM) do not call a loss function"
        )
    loss = PoissonLoss(**loss_options)
    reconstructor.loss_function = loss
    return loss
