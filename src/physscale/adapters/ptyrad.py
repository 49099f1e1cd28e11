"""PtyRAD (ptyrad 1.0.0): its Poisson term through physscale, and the scale of its data.

PtyRAD's solver calls ``solver.loss_fn(model_DP, measured_DP, obja, objp,
omode_occu)`` and wants ``(total, parts)`` back, one part per key of
``loss_fn.loss_params`` (its ``CombinedLoss``). Its Poisson term
``loss_poissn`` is ``-mean(I * log(m + eps) - m) / mean(I)`` times its
weight (``dp_pow=1``): intensities, a mean, eps inside the logarithm only,
each batch divided by its own mean. PtyRAD's measurements are normalized
intensities (``meas_normalization``, ``max_at_one`` by default), so photons
are ``s**2 * I`` for the data's intensity scale ``s``; PtyRAD logs its
normalization constant but stores none.

- [`PoissonTerm`][physscale.adapters.ptyrad.PoissonTerm]: ``parity=True`` is ``loss_poissn`` exactly
  (`PARITY`); otherwise the photon likelihood (`CONVENTION`):
  the mean per-pixel deviance of the counts ``s**2 * I`` under the rate
  ``s**2 * (m + eps)``, float64 inside, about 0.5 at a Poisson-limited fit,
  finite on an all-zero batch.
- [`install_loss`][physscale.adapters.ptyrad.install_loss]: puts it into the solver's
``CombinedLoss`` (every
  other term unchanged).
- [`record_from_solver`][physscale.adapters.ptyrad.record_from_solver]: the
[`ScaleRecord`][physscale.ScaleRecord] of the
  solver's measurements (intensity domain).

Three lines::

    from physscale.adapters import ptyrad as ps_ptyrad
    ps_ptyrad.install_loss(solver, ps_ptyrad.record_from_solver(solver, nphotons=n))
    solver.run()

PtyRAD is imported only by [`install_loss`][physscale.adapters.ptyrad.install_loss] and
[`combined_loss_class`][physscale.adapters.ptyrad.combined_loss_class].
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch

from physscale.adapters._host import require_host
from physscale.adapters.conventions import Convention
from physscale.core.likelihood import Form
from physscale.derive import derive_scale_record
from physscale.errors import OptionError, StateError
from physscale.record import ScaleRecord

__all__ = [
    "CONVENTION",
    "PARITY",
    "PoissonTerm",
    "combined_loss_class",
    "dose_config",
    "install_loss",
    "record_from_solver",
]

_INSTALL = "pip install ptyrad==1.0.0 (Python 3.12; see scripts/make_interop_env.sh)"

PARITY = Convention(
    "ptyrad",
    order="pred, obs",
    domain="intensity",
    reduction="mean",
    form="tf",
    eps="log",
    scale="one",
    divide_by="obs_mean",
)
"""PtyRAD's own ``loss_poissn`` value (``dp_pow=1``), in its units."""
CONVENTION = Convention(
    "ptyrad",
    order="pred, obs",
    domain="intensity",
    reduction="mean",
    form="deviance",
    eps="rate",
    scale="record",
)
"""The photon likelihood on PtyRAD's normalized intensities: the per-pixel mean deviance of ``s**2
* I`` under ``s**2 * (m + eps)``."""


class PoissonTerm:
    """A ``loss_poissn`` for PtyRAD's ``CombinedLoss``: ``term(model_DP, measured_DP)``.

    Args:
        scale: the intensity scale ``s`` of the measurements (photons ``= s**2
            * I``): a number, 0-d tensor or [`ScaleRecord`][physscale.ScaleRecord]
            ([`record_from_solver`][physscale.adapters.ptyrad.record_from_solver]). Not used with
            ``parity``.
        parity: reproduce PtyRAD's ``loss_poissn`` (unweighted) instead.
        eps: PtyRAD's ``eps`` (its ``loss_params["loss_poissn"]["eps"]``), in
            its intensity units.
        form: the photon likelihood's form (``"deviance"``: 0 at a perfect
            fit; ``"tf"``, ``"exact"``, ``"stirling"``: same gradients).

    ``model_DP``, ``measured_DP``: ``(B, H, W)`` simulated and measured
    intensities, real, >= 0. Returns a 0-d tensor (float32 for float32
    inputs). Not an ``nn.Module`` (so a ``CombinedLoss`` holding it gains no
    submodule and its ``get_loss_poissn`` is not shadowed).
    """

    def __init__(
        self, scale: Any = None, *, parity: bool = False, eps: float = 1e-6, form: Form = "deviance"
    ) -> None:
        self.parity = bool(parity)
        self.eps = eps
        if self.parity:
            self.loss = PARITY.bind(None, eps=eps)
        else:
            if scale is None:
                raise OptionError(
                    "the photon likelihood needs the measurements' intensity scale: "
                    "physscale.adapters.ptyrad.record_from_solver(solver, nphotons=...) gives "
                    "it; or pass parity=True for PtyRAD's own loss_poissn value"
                )
            self.loss = CONVENTION.bind(scale, eps=eps, form=form)

    def __call__(self, model_DP: torch.Tensor, measured_DP: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return self.loss(model_DP, measured_DP)

    def __repr__(self) -> str:
        what = "parity" if self.parity else f"photons, scale={self.loss.scale!r}"
        return f"PoissonTerm({what}, eps={self.eps!r})"


def _poissn_params(loss_params: Any) -> Mapping[str, Any]:
    params = loss_params.get("loss_poissn") if isinstance(loss_params, Mapping) else None
    if not isinstance(params, Mapping):
        raise StateError(
            "PtyRAD's loss_params have no 'loss_poissn' entry; build the solver from "
            "validated params (ptyrad.params.PtyRADParams fills it)"
        )
    dp_pow = params.get("dp_pow", 1.0)
    if dp_pow != 1:
        raise OptionError(
            f"loss_poissn has dp_pow={dp_pow!r}; a Poisson likelihood is of the intensities "
            f"themselves (dp_pow=1)"
        )
    return params


@functools.cache
def combined_loss_class() -> type:
    """PtyRAD's ``CombinedLoss`` with ``get_loss_poissn`` from a
    [`PoissonTerm`][physscale.adapters.ptyrad.PoissonTerm].

    Made (importing PtyRAD) on first call. ``cls(loss_params, device, term=...)``;
    ``forward`` and every other term are PtyRAD's.
    """
    losses = require_host(
        "ptyrad.core.losses", _INSTALL, "physscale.adapters.ptyrad.combined_loss_class"
    )

    class CombinedLoss(losses.CombinedLoss):  # type: ignore[misc,name-defined]
        """PtyRAD's ``CombinedLoss``; its ``loss_poissn`` is ``weight * term(m, I)``."""

        def __init__(
            self, loss_params: dict[str, Any], device: Any = "cuda", *, term: PoissonTerm
        ) -> None:
            super().__init__(loss_params, device=device)
            self.poisson_term = term

        def get_loss_poissn(self, model_DP: torch.Tensor, measured_DP: torch.Tensor) -> Any:  # noqa: N803
            params = _poissn_params(self.loss_params)
            if not params.get("state", False):
                return super().get_loss_poissn(model_DP, measured_DP)  # PtyRAD's 0
            return self.poisson_term(model_DP, measured_DP) * params.get("weight", 1.0)

    return CombinedLoss


def install_loss(
    solver: Any, scale: Any = None, *, parity: bool = False, form: Form = "deviance"
) -> PoissonTerm:
    """Make a ``PtyRADSolver`` minimize [`PoissonTerm`][physscale.adapters.ptyrad.PoissonTerm] as
    its ``loss_poissn``.

    Replaces ``solver.loss_fn`` by
    [`combined_loss_class`][physscale.adapters.ptyrad.combined_loss_class]'s loss on the
    same ``loss_params`` and device, and switches ``loss_poissn`` on (its
    ``weight`` and ``eps`` are kept; the other terms stay as configured:
    ``loss_single`` is on in PtyRAD's defaults). Call before ``solver.run()``.

    Args:
        solver: a ``ptyrad.solver.PtyRADSolver``.
        scale: as [`PoissonTerm`][physscale.adapters.ptyrad.PoissonTerm].
        parity: as [`PoissonTerm`][physscale.adapters.ptyrad.PoissonTerm].
        form: as [`PoissonTerm`][physscale.adapters.ptyrad.PoissonTerm].

    Raises:
        ModuleNotFoundError: PtyRAD is not installed (says what to install).
        StateError: the solver has no ``CombinedLoss`` with ``loss_poissn``.
        OptionError: ``dp_pow`` is not 1, or no scale for the photon likelihood.
    """
    cls = combined_loss_class()
    host = getattr(solver, "loss_fn", None)
    loss_params = getattr(host, "loss_params", None)
    if host is None or loss_params is None:
        raise StateError(
            f"install_loss needs a PtyRADSolver whose loss_fn is PtyRAD's CombinedLoss "
            f"(with loss_params); got {type(solver).__name__} with loss_fn "
            f"{type(host).__name__}"
        )
    params = _poissn_params(loss_params)
    term = PoissonTerm(scale, parity=parity, eps=params.get("eps", 1e-6), form=form)
    loss_params["loss_poissn"]["state"] = True
    solver.loss_fn = cls(loss_params, device=getattr(host, "device", "cpu"), term=term)
    return term


def dose_config(params: Mapping[str, Any]) -> dict[str, float] | None:
    """nphotons from PtyRAD's Poisson-noise setting, as a config for ``resolve_nphotons``.

    ``init_params["meas_add_poisson_noise"]``: ``total_e_per_pattern`` is the
    expected counts per pattern; ``e_per_Ang2`` times ``pos_scan_step_size**2``
    (PtyRAD's conversion). None when PtyRAD adds no noise.

    Examples:
        >>> from physscale.adapters.ptyrad import dose_config
        >>> noise = {'unit': 'total_e_per_pattern', 'value': 1e6}
        >>> params = {'init_params': {'meas_add_poisson_noise': noise}}
        >>> dose_config(params)
        {'nphotons': 1000000.0}
        >>> dose_config({'init_params': {}}) is None
        True
    """
    init = params.get("init_params") or {}
    noise = init.get("meas_add_poisson_noise")
    if not isinstance(noise, Mapping):
        return None
    value = float(noise["value"])
    if noise.get("unit") == "e_per_Ang2":
        value *= float(init["pos_scan_step_size"]) ** 2
    return {"nphotons": value}


def record_from_solver(
    solver: Any,
    *,
    nphotons: Any = None,
    metadata: Any = None,
    config: Any = None,
    default: Any = None,
) -> ScaleRecord:
    """The intensity scale of a ``PtyRADSolver``'s measurements, as a record.

    ``s = sqrt(nphotons / mean per-pattern sum(I))`` over
    ``solver.init.init_variables["measurements"]`` (``(N, H, W)``, PtyRAD's
    normalized intensities; ``domain="intensity"``), so that ``s**2`` is the
    normalization constant PtyRAD logged when nphotons is the raw data's
    mean counts per pattern (e.g. ``physscale.normalize_counts(raw)[1].nphotons``).

    nphotons: ``nphotons`` > ``metadata`` > ``config`` (default: PtyRAD's own
    Poisson-noise dose, [`dose_config`][physscale.adapters.ptyrad.dose_config]) > ``default``, as
    [`physscale.resolve_nphotons`][physscale.resolve_nphotons]; none of them is an error.

    Raises:
        StateError: the solver holds no measurements.
        PhysscaleError: and every error of
            [`physscale.derive_scale_record`][physscale.derive_scale_record].

    Examples:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from physscale.adapters.ptyrad import record_from_solver
        >>> measurements = torch.full((4, 8, 8), 0.25)   # PtyRAD's normalized intensities
        >>> init = SimpleNamespace(init_variables={'measurements': measurements})
        >>> solver = SimpleNamespace(init=init)
        >>> record_from_solver(solver, nphotons=1600.0).intensity_scale   # sqrt(1600 / 16)
        10.0
    """
    init = getattr(solver, "init", None)
    variables = getattr(init, "init_variables", None)
    if not isinstance(variables, Mapping) or variables.get("measurements") is None:
        raise StateError(
            f"{type(solver).__name__} holds no measurements (solver.init.init_variables"
            f"['measurements']); build a PtyRADSolver first"
        )
    if config is None:
        params = getattr(solver, "params", None)
        config = dose_config(params) if isinstance(params, Mapping) else None
    return derive_scale_record(
        variables["measurements"],
        nphotons=nphotons,
        metadata=metadata,
        config=config,
        default=default,
        domain="intensity",
        data_source="ptyrad: solver.init.init_variables['measurements']",
    )
