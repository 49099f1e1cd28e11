"""cdtools (cdtools-py 0.3.2): its Poisson loss through physscale, in its own order.

cdtools' reconstructors (``model.Adam_optimize``, ``AdamReconstructor``...)
call ``model.loss(patterns, sim_patterns, mask=model.mask)``: the *measured*
intensities first. Its ``tools.losses.poisson_nll`` is
``sum(sim + eps - xlogy(I, sim + eps))`` over the unmasked pixels
(``eps=1e-6``), ``subtract_min=True`` subtracting ``sum(I - xlogy(I, I))``:
[`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll] with ``domain="intensity"``,
``reduction="sum"``, ``background=s**2 * eps`` and ``form="tf"`` (or
``"deviance"``), the arguments swapped (`CONVENTION`).

- [`poisson_nll`][physscale.adapters.cdtools.poisson_nll] /
[`PoissonNLL`][physscale.adapters.cdtools.PoissonNLL]: that loss with cdtools'
  signature; at scale 1 (counts) the value and gradient are cdtools' own, to
  the bit with a mask (float32).
- [`install_loss`][physscale.adapters.cdtools.install_loss]: puts it on a cdtools model, with a
photon-count
  normalizer for the reported epoch loss and the background's learning-rate
  factor for normalized data::

      from physscale.adapters import cdtools as ps_cdtools
      loss = ps_cdtools.install_loss(model, record)      # record: the data's scale
      for epoch_loss in model.Adam_optimize(50, dataset, lr_factors=loss.lr_factors): ...

Units: the patterns are ``counts / s**2`` (``s`` the intensity scale of a
[`ScaleRecord`][physscale.ScaleRecord], 1 for raw counts); the loss is in photons.
cdtools is imported only by [`install_loss`][physscale.adapters.cdtools.install_loss].
"""

from __future__ import annotations

from typing import Any

import torch

from physscale.adapters._host import require_host
from physscale.adapters.conventions import Convention, HostLoss
from physscale.core.checks import scalar_scale
from physscale.errors import StateError

__all__ = ["CONVENTION", "PhotonNormalizer", "PoissonNLL", "install_loss", "poisson_nll"]

_INSTALL = "pip install cdtools-py==0.3.2"

CONVENTION = Convention(
    "cdtools",
    order="obs, pred",
    domain="intensity",
    reduction="sum",
    form="tf",
    eps="rate",
    scale="record",
)
"""cdtools' Poisson loss: ``loss(measured, simulated, mask=...)``, intensities, summed, eps added
to the simulated rate, patterns in ``counts / s**2``."""


class PoissonNLL(HostLoss):
    """cdtools' ``poisson_nll`` through physscale, called as ``loss(intensities, sim, mask=None)``.

    Args:
        scale: the intensity scale ``s`` of the patterns (counts ``= s**2 *
            pattern``): a positive number, 0-d tensor or
            [`ScaleRecord`][physscale.ScaleRecord]; 1 for raw counts.
        eps: cdtools' ``eps``, added to the simulated intensities (pattern units).
        subtract_min: cdtools' option; True is the ``deviance`` form (0 at a
            perfect fit, computed in float64: no cancellation at high counts).

    ``__call__(intensities, sim_intensities, mask=None)``: ``(B, H, W)``
    measured and simulated intensities, real, >= 0; ``mask`` boolean
    ``(H, W)``, True = use the pixel. Returns a 0-d tensor (float32 for
    float32 inputs), in nats. Not an ``nn.Module``: on a model it adds no
    ``state_dict`` key.
    """

    def __init__(self, scale: Any = 1.0, *, eps: float = 1e-6, subtract_min: bool = False) -> None:
        super().__init__(CONVENTION, scale, eps=eps, form="deviance" if subtract_min else "tf")
        self.eps = eps
        self.subtract_min = bool(subtract_min)
        #: ``lr_factors`` for cdtools' Adam: the background is stored as the square root
        #: of an intensity in pattern units, ``1/s`` of its value in photons.
        self.lr_factors: dict[str, float] = {"background": 1.0 / scalar_scale(scale)}

    def __call__(  # cdtools' names
        self, intensities: torch.Tensor, sim_intensities: torch.Tensor, mask: Any = None
    ) -> torch.Tensor:
        return super().__call__(intensities, sim_intensities, mask)


def poisson_nll(
    intensities: torch.Tensor,
    sim_intensities: torch.Tensor,
    mask: Any = None,
    eps: float = 1e-6,
    subtract_min: bool = False,
    *,
    scale: Any = 1.0,
) -> torch.Tensor:
    """``cdtools.tools.losses.poisson_nll`` through physscale, same signature (plus ``scale``).

    At ``scale=1`` the value is cdtools' (the same float32 operations with a
    mask; ``subtract_min=True`` more exact, in float64). See
    [`PoissonNLL`][physscale.adapters.cdtools.PoissonNLL].

    Examples:
        >>> import torch
        >>> from physscale.adapters.cdtools import poisson_nll
        >>> measured = torch.full((2, 4, 4), 4.0)       # intensities, counts
        >>> simulated = torch.full((2, 4, 4), 4.0)
        >>> poisson_nll(measured, simulated).shape
        torch.Size([])
    """
    return PoissonNLL(scale, eps=eps, subtract_min=subtract_min)(intensities, sim_intensities, mask)


class PhotonNormalizer:
    """cdtools' ``loss_normalizer`` interface for
    [`PoissonNLL`][physscale.adapters.cdtools.PoissonNLL] with ``subtract_min``.

    Divides the epoch's summed deviance by half the number of pixels that
    counted at least one photon (``s**2 * pattern >= 1`` in the model's mask),
    cdtools' own reading of ``SimplePoissonNLLNormalizer`` (about 1 at a
    Poisson-limited fit), but in photons: cdtools' counts ``pattern >= 1``,
    which on normalized data misses most pixels, and subtracts a float32
    offset as large as the loss.
    """

    def __init__(self, scale: Any = 1.0) -> None:
        self.s2 = scalar_scale(scale) ** 2
        self.first_pass_complete = False
        self.n_photon_pixels = 0

    def accumulate(self, patterns: torch.Tensor, mask: Any = None) -> None:
        """Count the pixels with at least one photon (first epoch only)."""
        if self.first_pass_complete:
            return
        lit = patterns.detach().to(torch.float64).mul(self.s2).ge(1.0)
        if mask is not None:
            lit = lit & torch.as_tensor(mask, dtype=torch.bool, device=lit.device)
        self.n_photon_pixels += int(lit.sum())

    def normalize_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The epoch's summed loss over half the photon-pixel count."""
        self.first_pass_complete = True
        return loss / (0.5 * max(self.n_photon_pixels, 1))


def install_loss(
    model: torch.nn.Module, scale: Any = 1.0, *, subtract_min: bool = True, eps: float = 1e-6
) -> PoissonNLL:
    """Make a cdtools model minimize [`PoissonNLL`][physscale.adapters.cdtools.PoissonNLL] and
    return the loss.

    Sets ``model.loss`` (what cdtools' reconstructors call, with
    ``mask=model.mask``) and ``model.loss_normalizer`` (a
    [`PhotonNormalizer`][physscale.adapters.cdtools.PhotonNormalizer] with ``subtract_min``; None
    without, since the
    ``tf`` value carries an offset a float32 epoch sum cannot subtract). The
    model's ``state_dict`` keys do not change. Pass ``loss.lr_factors`` to
    ``Adam_optimize`` (merged with your own): the background's ``1/s``, empty
    when the model has no ``background`` parameter.

    Args:
        model: a cdtools ``CDIModel`` (``FancyPtycho``...).
        scale: the patterns' intensity scale (1 for raw counts), as
            [`PoissonNLL`][physscale.adapters.cdtools.PoissonNLL].
        subtract_min: the ``deviance`` form (default): the reported epoch loss
            is exact, about 1 at a Poisson-limited fit.
        eps: cdtools' eps, in pattern units.

    Raises:
        ModuleNotFoundError: cdtools is not installed (says what to install).
        StateError: not a cdtools model, or installing changed its state_dict keys.
    """
    models = require_host("cdtools.models", _INSTALL, "physscale.adapters.cdtools.install_loss")
    if not isinstance(model, models.CDIModel):
        raise StateError(
            f"install_loss needs a cdtools model (a cdtools.models.CDIModel such as "
            f"FancyPtycho), got {type(model).__name__}"
        )
    loss = PoissonNLL(scale, eps=eps, subtract_min=subtract_min)
    if "background" not in dict(model.named_parameters()):
        loss.lr_factors = {}  # cdtools warns about factors for parameters it lacks
    before = set(model.state_dict())
    if "loss" in model._modules:
        # A module put there before (model.loss = SomeModule) is a submodule that the
        # class's own loss method shadows; remove it so the instance attribute wins.
        del model._modules["loss"]
    # A plain object lands in the instance dict, ahead of the class's CDIModel.loss.
    setattr(model, "loss", loss)  # noqa: B010 (nn.Module's typing admits only tensors/modules)
    setattr(model, "loss_normalizer", PhotonNormalizer(scale) if subtract_min else None)  # noqa: B010
    after = set(model.state_dict())
    if after - before:
        raise StateError(
            f"installing the loss added state_dict keys {sorted(after - before)}; "
            f"cdtools' checkpoints would not load"
        )
    return loss
