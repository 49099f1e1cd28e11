"""How a host code calls a Poisson loss, declared once per host.

A host's loss call differs from [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll] in
five
ways, and each is one field of a [`Convention`][physscale.adapters.conventions.Convention]:

- **order**: which argument is the prediction. physscale takes
  ``(pred, obs)``; cdtools calls ``loss(measured, simulated)``.
- **domain**: amplitudes or intensities.
- **reduction**: ``"mean"``, ``"sum"``, ``"per_sample"`` or ``"none"``.
- **eps**: where the host's small constant goes. ``"floor"``: physscale's own
  floor on the rate inside the logarithm, ``log(max(lam, eps))``, in counts;
  ``"rate"``: added to the rate, ``lam = s**2 * (pred + eps)`` (cdtools'
  ``sim + eps``); ``"log"``: inside the logarithm only,
  ``s**2 * pred - k * log(s**2 * (pred + eps))`` (PtyRAD's ``log(m + eps)``).
  ``"rate"`` and ``"log"`` take ``eps`` in the host's units, like the host.
- **scale**: what turns the host's numbers into photons. ``"one"``: they
  already are counts (or the host's own units, for a parity value);
  ``"record"``: the dataset's intensity scale ``s`` (a number, 0-d tensor or
  [`ScaleRecord`][physscale.ScaleRecord]), counts ``= s**2 * intensity``; ``"gain"``:
  ``y = gain * Poisson(x / gain)``, ``s = gain ** -0.5``.

Two more fields say what the host's value is beyond the likelihood: ``form``
(the constant terms, `physscale.core.likelihood.FORMS`) and
``divide_by`` (``"obs_mean"``: each batch divided by its own mean measured
counts, PtyRAD's normalization).

The five adapters declare theirs (``CONVENTION`` in each module); a host
physscale does not know needs only its own declaration (docs/interop/your-host.md)::

    from physscale.adapters.conventions import Convention
    mine = Convention("myhost", order="obs, pred", reduction="sum", eps="rate", scale="record")
    host_model.loss = mine.bind(scale=record, eps=1e-6)   # called as loss(obs, pred)

No math lives here: [`Convention.loss`][physscale.adapters.conventions.Convention.loss] maps the
arguments and calls the core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from physscale.core.checks import check_option, scalar_scale
from physscale.core.likelihood import (
    DOMAINS,
    FORMS,
    REDUCTIONS,
    Domain,
    Form,
    Reduction,
    scaled_poisson_nll,
)
from physscale.core.loss_inputs import eps_value
from physscale.counts import scale_from_gain
from physscale.errors import OptionError

__all__ = ["Convention", "HostLoss"]

Order = Literal["pred, obs", "obs, pred"]
EpsPlacement = Literal["floor", "rate", "log"]
ScaleMeaning = Literal["one", "record", "gain"]
DivideBy = Literal["nothing", "obs_mean"]

ORDERS: tuple[Order, ...] = ("pred, obs", "obs, pred")
EPS_PLACEMENTS: tuple[EpsPlacement, ...] = ("floor", "rate", "log")
SCALE_MEANINGS: tuple[ScaleMeaning, ...] = ("one", "record", "gain")
DIVISORS: tuple[DivideBy, ...] = ("nothing", "obs_mean")

#: physscale's default floor on the rate inside the logarithm, in counts.
FLOOR = 1e-12


@dataclass(frozen=True)
class Convention:
    """One host code's way of calling a Poisson loss (see the module docstring).

    Args:
        host: the host's name, for messages.
        order: ``"pred, obs"`` or ``"obs, pred"``: the host's argument order.
        domain: ``"amplitude"`` or ``"intensity"``: what the host's tensors hold.
        reduction: as [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll].
        form: as [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll] (the host value's
            constants).
        eps: ``"floor"``, ``"rate"`` or ``"log"``: where the host's eps goes.
        scale: ``"one"``, ``"record"`` or ``"gain"``: what the host's scale means.
        divide_by: ``"nothing"`` or ``"obs_mean"`` (each batch over its mean counts).
    """

    host: str
    order: Order = "pred, obs"
    domain: Domain = "intensity"
    reduction: Reduction = "mean"
    form: Form = "tf"
    eps: EpsPlacement = "floor"
    scale: ScaleMeaning = "one"
    divide_by: DivideBy = "nothing"

    def __post_init__(self) -> None:
        check_option(self.order, ORDERS, "order")
        check_option(self.domain, DOMAINS, "domain")
        check_option(self.reduction, REDUCTIONS, "reduction")
        check_option(self.form, FORMS, "form")
        check_option(self.eps, EPS_PLACEMENTS, "eps")
        check_option(self.scale, SCALE_MEANINGS, "scale")
        check_option(self.divide_by, DIVISORS, "divide_by")
        if (self.eps == "log" or self.divide_by == "obs_mean") and self.reduction != "mean":
            # Both are constants of a mean over the batch; other reductions never needed them.
            raise OptionError(
                f"{self.host}: eps='log' and divide_by='obs_mean' describe a mean over the "
                f"batch; got reduction={self.reduction!r}"
            )

    def physscale_scale(self, scale: Any) -> Any:
        """The physscale scale ``s`` for the host's ``scale`` argument (see ``scale``)."""
        if self.scale == "one":
            if scale is not None and scalar_scale(scale, f"{self.host} scale") != 1.0:
                raise OptionError(
                    f"{self.host} works in photon counts (or its own units), so its scale is 1; "
                    f"got {scale!r}. Normalized data need a convention with scale='record'"
                )
            return 1.0
        if self.scale == "gain":
            return scale_from_gain(scale)
        if scale is None:
            raise OptionError(
                f"{self.host} needs the dataset's intensity scale (a number or a "
                f"ScaleRecord: counts = s**2 * intensity); got None"
            )
        return scale

    def loss(
        self,
        first: torch.Tensor,
        second: torch.Tensor,
        scale: Any = None,
        *,
        eps: float | None = None,
        mask: Any = None,
        background: Any = 0.0,
        count_scale: Any = None,
        form: Form | None = None,
        reduction: Reduction | None = None,
    ) -> torch.Tensor:
        """The host's Poisson loss of its two arguments, in its order, via the core.

        Args:
            first: the host's first tensor (``obs`` when ``order="obs, pred"``).
            second: the host's second tensor.
            scale: the host's scale (see ``scale``): None or 1 for ``"one"``.
            eps: the host's constant, placed as ``eps`` says: for ``"floor"`` the
                floor in counts (default `FLOOR`; 0 means none), for
                ``"rate"`` and ``"log"`` in the host's units (default 0).
            mask: as [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll].
            background: as [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll], in
                counts.
            count_scale: as [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll].
            form: overrides the declared one for this call.
            reduction: overrides the declared one for this call.
        """
        pred, obs = (first, second) if self.order == "pred, obs" else (second, first)
        s = self.physscale_scale(scale)
        form = self.form if form is None else form
        reduction = self.reduction if reduction is None else reduction
        floor = FLOOR if self.eps != "floor" or eps is None else eps
        eps = 0.0 if self.eps == "floor" or eps is None else eps_value(eps)
        s2 = 1.0
        if eps != 0.0:
            # The host's eps in its units is s**2 * eps photons of rate.
            s2 = float(s.detach()) ** 2 if isinstance(s, torch.Tensor) else scalar_scale(s) ** 2
            background = background + s2 * eps
        batch_mean = self.eps == "log" or self.divide_by == "obs_mean"
        if batch_mean and (mask is not None or reduction != "mean"):
            # Constants of an unmasked mean over the batch (see __post_init__).
            raise OptionError(
                f"{self.host}'s loss is a mean over the whole batch: no mask, "
                f"reduction='mean' (got {reduction!r})"
            )
        value = scaled_poisson_nll(
            pred,
            obs,
            s,
            domain=self.domain,
            form=form,
            reduction=reduction,
            mask=mask,
            background=background,
            eps=floor,
            count_scale=count_scale,
        )
        if self.eps == "log" and eps != 0.0:
            value = value - s2 * eps  # the linear term holds pred, not pred + eps
        if self.divide_by == "obs_mean":
            s2 = scalar_scale(s) ** 2
            o = obs.detach() if self.domain == "intensity" else obs.detach().square()
            value = value / (o.mean().to(value.dtype) * s2)
            if form == "tf" and s2 != 1.0:
                value = value + math.log(s2)  # k*log(lam) in host units, not photons
        return value

    def bind(self, scale: Any = None, **options: Any) -> HostLoss:
        """A callable with the host's signature ``loss(first, second, mask=None)``.

        ``options`` (``eps``, ``background``, ``count_scale``, ``form``,
        ``reduction``) are fixed; ``scale`` is checked now.
        """
        return HostLoss(self, scale, **options)


class HostLoss:
    """[`Convention.loss`][physscale.adapters.conventions.Convention.loss] with its scale and
    options fixed, called in the host's order.

    Not an ``nn.Module``: a host that stores it on its model (``model.loss =
    ...``) gets no submodule, so no ``state_dict`` key and no class method
    shadowing it (``nn.Module.__setattr__`` files modules away from the
    instance ``__dict__``, where a method of the host's class would win).
    """

    def __init__(self, convention: Convention, scale: Any = None, **options: Any) -> None:
        unknown = set(options) - {"eps", "background", "count_scale", "form", "reduction"}
        if unknown:
            raise OptionError(f"unknown option(s) for a {convention.host} loss: {sorted(unknown)}")
        self.convention = convention
        self.scale = scale
        self.options = options
        convention.physscale_scale(scale)  # refuses a bad scale now, not at the first batch

    def __call__(self, first: torch.Tensor, second: torch.Tensor, mask: Any = None) -> torch.Tensor:
        return self.convention.loss(first, second, self.scale, mask=mask, **self.options)

    def __repr__(self) -> str:
        host, options = self.convention.host, self.options
        return f"{type(self).__name__}({host!r}, scale={self.scale!r}, {options})"
