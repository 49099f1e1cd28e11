"""PtychoPINN's PyTorch port (``ptycho_torch``): its container, its loss slot, its bundles.

Only the port's conventions live here (docs/interop/ptychopinn.md has the
full map); the math, the unpickler and the archive writer are physscale's own:

- **Data.** ``PtychoDataContainerTorch.X``: normalized amplitudes, channels
  last ``(n, N, N, C)``, ``C = gridsize**2``; the scale in its field
  ``physics_scaling_constant``, a ``(1, 1, 1)`` float32 tensor.
- **Loss.** ``compute_loss`` hands its ``Loss`` slot photon-count amplitudes
  and wants one value per sample: [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll]
  with
  scale 1, ``form="exact"``, ``reduction="per_sample"``.
- **Bundles.** ``wts.h5.zip``, with a per-model ``params.dill`` (a pickle)
  whose ``intensity_scale`` its inference multiplies by (1.0 when unknown).
- **Scaler.** ``IntensityScalerModule.scale(x, f) = x * f``, the inverse of
  physscale's ``normalize``: ``s = 1 / f``.

The port is imported only by [`save_bundle`][physscale.adapters.ptychopinn.save_bundle] (and its
model only by the
objects you pass in); everything else works on duck-typed objects.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch

from physscale.adapters._host import require_host
from physscale.adapters.conventions import Convention
from physscale.attach import RECORD_FIELD as _ATTACH_RECORD_FIELD
from physscale.attach import check_attach_arguments
from physscale.core.checks import scalar_scale
from physscale.derive import derive_scale_record
from physscale.errors import DataFileError, RecordError, StateError
from physscale.io.archive import add_members, open_archive, read_member
from physscale.io.checkpoint import parse_record_json, require_record
from physscale.io.pickles import PLAIN_DATA, PickleRules, load_pickle
from physscale.nn import IntensityScaler, ScaledPoissonNLLLoss
from physscale.record import ScaleRecord

__all__ = [
    "CONVENTION",
    "LAYOUT",
    "RECORD_FIELD",
    "RECORD_MEMBER",
    "SCALE_FIELD",
    "attach",
    "container_layout",
    "install_loss",
    "poisson_loss",
    "port_factor",
    "record_from_bundle",
    "record_from_params",
    "save_bundle",
    "scale_into_params",
    "scaler_from_port",
]

CONVENTION = Convention(
    "PtychoPINN's port",
    order="pred, obs",
    domain="amplitude",
    reduction="per_sample",
    form="exact",
    eps="floor",
    scale="one",
)
"""The port's ``Loss`` slot: ``Loss(pred, obs)`` on photon-count amplitudes (it multiplies by
``physics_scaling_constant`` first), one exact NLL per sample."""
LAYOUT = "NHWC"
"""The layout of the port's ``X``: ``(n, N, N, C)``, channels last."""
SCALE_FIELD = "physics_scaling_constant"
"""The port's own container field for the physics scale (its loaders read it)."""
RECORD_FIELD = _ATTACH_RECORD_FIELD
"""Where [`attach`][physscale.adapters.ptychopinn.attach] puts the
[`ScaleRecord`][physscale.ScaleRecord] (not a port field; the same field as
[`physscale.attach_intensity_scale`][physscale.attach_intensity_scale])."""
RECORD_MEMBER = "physscale_record.json"
"""The archive member [`save_bundle`][physscale.adapters.ptychopinn.save_bundle] adds to a port
bundle."""
#: The port's params key for the physics scale (``params.dill``, ``params.cfg``).
PARAMS_SCALE_KEY = "intensity_scale"
#: The params key [`scale_into_params`][physscale.adapters.ptychopinn.scale_into_params] adds for
#: the record (a JSON string).
PARAMS_RECORD_KEY = "physscale_record"

_INSTALL = (
    "the PtychoPINN source on sys.path (it is not on PyPI: clone github.com/hoidn/PtychoPINN "
    "and add the folder holding ptycho_torch/ to PYTHONPATH)"
)
_MAX_MEMBER_BYTES = 16 * 2**20
_MODELS = ("diffraction_to_obj", "autoencoder")  # the port's two; they share one params
_PARAMS = "params.dill"
_WHAT = "port bundle (zip archive)"

# params.dill is the port's config: numbers, strings, paths, numpy scalars. A real
# one has a few hundred operations; the cap bounds memory whatever the file says.
_PARAMS_RULES = PickleRules(
    allowed=PLAIN_DATA,
    max_opcodes=10_000,
    what="params",
    needs="the port's params need a few hundred",
    refusal=(
        "{where} references {module}.{name}; physscale reads only plain data from a port "
        "bundle and never runs code from it"
    ),
    corrupt="{where} is not a readable pickle",
)


# --------------------------------------------------------------------------- data


def _get(container: Any, name: str) -> Any:
    if isinstance(container, Mapping):
        return container.get(name)
    return getattr(container, name, None)


def _set(container: Any, name: str, value: Any) -> None:
    if isinstance(container, MutableMapping):
        container[name] = value
    else:
        setattr(container, name, value)


def container_layout(container: Any) -> str:
    """The layout of a port container's ``X``: always ``"NHWC"``, checked against its shape.

    Args:
        container: a ``ptycho_torch`` ``PtychoDataContainerTorch``, or a dict
            holding ``"X"`` in the port's shape ``(n, N, N, C)``.

    Raises:
        StateError: not a port container, or its ``X`` is not ``(n, N, N, C)``
            with square patterns (then pass the data to
            [`physscale.derive_scale_record`][physscale.derive_scale_record] with an explicit
            ``layout``).

    Examples:
        >>> import numpy as np
        >>> from physscale.adapters.ptychopinn import container_layout
        >>> container_layout({'X': np.zeros((8, 32, 32, 1), dtype=np.float32)})
        'NHWC'
    """
    kind = type(container)
    is_port = kind.__name__ == "PtychoDataContainerTorch" and kind.__module__.startswith(
        "ptycho_torch"
    )
    if not (is_port or isinstance(container, Mapping)):
        raise StateError(
            f"{kind.__name__} is not the port's PtychoDataContainerTorch or a dict "
            f"with 'X'; its layout is unknown, so derive the scale with an explicit layout= "
            f"(physscale.attach_intensity_scale(container, layout=...))"
        )
    shape = tuple(getattr(_get(container, "X"), "shape", ()))
    if len(shape) != 4 or shape[1] != shape[2]:
        raise StateError(
            f"the port's X is (n, N, N, C) with C = gridsize**2, got shape {shape}; pass the "
            f"data to physscale.derive_scale_record with the layout it really has"
        )
    return LAYOUT


def attach(
    container: Any,
    *,
    nphotons: Any = None,
    config: Any = None,
    default: Any = None,
    record: ScaleRecord | None = None,
    overwrite: bool = False,
) -> ScaleRecord:
    """Derive the physics scale of a port training container and attach it the port's way.

    nphotons: ``nphotons`` > ``container.metadata`` > ``config`` (the port's
    ``TrainingConfig``) > ``default`` (SPEC §4); the layout comes from the
    container ([`container_layout`][physscale.adapters.ptychopinn.container_layout]), never from a
    default. Afterwards
    the container holds ``physics_scaling_constant`` (a ``(1, 1, 1)``
    float32 tensor, where the port's ``_ensure_container`` looks before
    deriving its own) and ``physscale_record``; the port's own
    ``nphotons_source`` / ``nphotons_resolved`` are not touched.

    Args:
        container: the port's ``PtychoDataContainerTorch`` (or a dict with
            ``"X"``), ``X`` normalized amplitudes ``(n, N, N, C)``.
        nphotons: as for [`physscale.resolve_nphotons`][physscale.resolve_nphotons].
        config: as for [`physscale.resolve_nphotons`][physscale.resolve_nphotons] (the port's
            ``TrainingConfig``).
        default: as for [`physscale.resolve_nphotons`][physscale.resolve_nphotons].
        record: attach this record instead of deriving one (validation, test
            and inference containers carry the *training* scale).
        overwrite: replace a ``physscale_record`` already attached.

    Raises:
        StateError: not a port container, a record already attached, or
            ``record`` given together with derivation arguments.
        PhysscaleError: and every error of
            [`physscale.derive_scale_record`][physscale.derive_scale_record].

    Examples:
        >>> import numpy as np
        >>> from physscale.adapters.ptychopinn import attach
        >>> container = {'X': np.full((8, 32, 32, 1), 0.25, dtype=np.float32)}   # (n, N, N, C)
        >>> record = attach(container, nphotons=1e6)
        >>> record.intensity_scale, container['physscale_record'] is record
        (125.0, True)
    """
    check_attach_arguments(
        container,
        attached=_get(container, RECORD_FIELD),
        record=record,
        overwrite=overwrite,
        derivation={"nphotons": nphotons, "config": config, "default": default},
    )
    if record is None:
        layout = container_layout(container)
        record = derive_scale_record(
            _get(container, "X"),
            nphotons=nphotons,
            metadata=_get(container, "metadata"),
            config=config,
            default=default,
            layout=layout,
        )
    # The port keeps (1, 1, 1) float32 (components._attach_physics_scale).
    scale = torch.tensor(record.intensity_scale, dtype=torch.float32).view(1, 1, 1)
    _set(container, SCALE_FIELD, scale)
    _set(container, RECORD_FIELD, record)
    return record


# --------------------------------------------------------------------------- loss


def poisson_loss(*, eps: float = 1e-12, persistent: bool = False) -> ScaledPoissonNLLLoss:
    """The port's Poisson loss as a physscale module, for its ``Loss`` slot.

    ``ScaledPoissonNLLLoss(1.0, form="exact", reduction="per_sample")``:
    ``-log Poisson(obs**2; pred**2)`` summed over ``(N, N, C)``, one value
    per sample, the port's ``PoissonLoss`` (float64: 2.5e-14 relative), with
    finite gradients where the rate and the counts are both 0 (the port's
    ``log_prob`` gives NaN there).

    Args:
        eps: floor on the rate inside the logarithm, in counts. ``eps=0.0``
            reproduces the port's gradients also where the predicted rate is
            below ``1e-12`` but photons were counted (see docs/poisson-nll.md).
        persistent: keep the module's fixed scale (1) out of ``state_dict``
            (the default), so a model with this loss in a slot has the same
            ``state_dict`` keys as with the port's own loss.

    Examples:
        >>> import torch
        >>> from physscale.adapters.ptychopinn import poisson_loss
        >>> loss = poisson_loss()
        >>> pred = torch.full((2, 8, 8, 1), 1.5)   # amplitudes, the port's (n, N, N, C)
        >>> loss(pred, pred).shape   # one value per sample
        torch.Size([2])
    """
    return ScaledPoissonNLLLoss(  # type: ignore[call-arg,unused-ignore]
        CONVENTION.physscale_scale(None),
        domain=CONVENTION.domain,
        form=CONVENTION.form,
        reduction=CONVENTION.reduction,
        eps=eps,
        persistent=persistent,
    )


def install_loss(
    model: torch.nn.Module, *, eps: float = 1e-12, persistent: bool = False
) -> ScaledPoissonNLLLoss:
    """Put [`poisson_loss`][physscale.adapters.ptychopinn.poisson_loss] in a
    ``PtychoPINN_Lightning``'s ``Loss`` slot and return it.

    Args:
        model: the port's ``PtychoPINN_Lightning`` (unsupervised, amplitude
            forward, Poisson loss: the path that multiplies by
            ``physics_scaling_constant`` before calling ``self.Loss``).
        eps: as for [`poisson_loss`][physscale.adapters.ptychopinn.poisson_loss].
        persistent: as for [`poisson_loss`][physscale.adapters.ptychopinn.poisson_loss].

    Raises:
        StateError: the model has no Poisson ``Loss`` slot on that path
            (supervised, MAE, ``rectangular_scaled`` or count-domain CI
            modes), or installing changed the ``state_dict`` keys although
            ``persistent=False``.
    """
    config = getattr(model, "model_config", None)
    mode = getattr(config, "mode", None)
    loss_function = getattr(config, "loss_function", None)
    forward = getattr(config, "physics_forward_mode", "amplitude")
    if not isinstance(getattr(model, "Loss", None), torch.nn.Module) or (
        mode,
        loss_function,
        forward,
    ) != ("Unsupervised", "Poisson", "amplitude"):
        raise StateError(
            f"install_loss needs the port's PtychoPINN_Lightning in unsupervised amplitude "
            f"mode with the Poisson loss (its compute_loss scales pred and obs by "
            f"physics_scaling_constant, then calls self.Loss); got {type(model).__name__} "
            f"with mode={mode!r}, loss_function={loss_function!r}, "
            f"physics_forward_mode={forward!r}"
        )
    before = set(model.state_dict())
    loss = poisson_loss(eps=eps, persistent=persistent)
    model.Loss = loss
    after = set(model.state_dict())
    if not persistent and after != before:
        raise StateError(
            f"installing the loss changed the model's state_dict keys "
            f"({sorted(after ^ before)}); strict loading of the port's checkpoints would fail"
        )
    return loss


# --------------------------------------------------------------------------- scaler


def scaler_from_port(
    port_scaler: Any = None, *, scale_factor: Any = None, trainable: bool = False
) -> IntensityScaler:
    """An [`IntensityScaler`][physscale.nn.IntensityScaler] that computes what the port's scaler
    does.

    The port's ``scale(x, f) = x * f`` and ``inv_scale(x, f) = x / f``, with
    ``f = exp(log_scale)`` when it has a (trainable) ``log_scale``, else the
    ``scale_factor`` passed per call; with ``s = 1 / f`` the returned scaler's
    ``normalize`` is the port's ``scale`` and its ``denormalize`` the port's
    ``inv_scale``. (The port multiplies by ``intensity_scale`` where TF
    divides, SPEC failure mode 2: for TF's behaviour use
    ``IntensityScaler(model_config.intensity_scale)``.)

    Args:
        port_scaler: the port's ``IntensityScalerModule`` (its ``log_scale``
            is used when not None), or None.
        scale_factor: the factor ``f`` the port passes per call, used when
            the scaler has no ``log_scale``: a positive number or 0-d tensor.
        trainable: whether the returned scaler's log-scale trains.

    Raises:
        StateError: neither a ``log_scale`` nor a ``scale_factor`` to read.

    Examples:
        >>> from physscale.adapters.ptychopinn import scaler_from_port
        >>> scaler = scaler_from_port(scale_factor=0.032)   # the factor the port multiplies by
        >>> round(float(scaler.scale), 3)   # 1 / 0.032
        31.25
    """
    log_scale = getattr(port_scaler, "log_scale", None)
    if log_scale is not None:
        factor = math.exp(float(torch.as_tensor(log_scale).detach()))
    elif scale_factor is not None:
        factor = scalar_scale(scale_factor, "the port's scale_factor")
    else:
        raise StateError(
            "the port's scaler has no log_scale (it is None unless intensity_scale_trainable); "
            "pass the scale_factor the port multiplies by"
        )
    return IntensityScaler(1.0 / factor, trainable=trainable)


def port_factor(scaler: IntensityScaler) -> float:
    """The factor ``f`` the port's ``scale(x, f)`` / ``inv_scale(x, f)`` need to
    compute what ``scaler.normalize`` / ``scaler.denormalize`` do: ``1 / scaler.scale``.

    To load it into a port scaler with a trainable ``log_scale``, set
    ``port_scaler.log_scale.data.fill_(math.log(port_factor(scaler)))``.

    Examples:
        >>> from physscale.adapters.ptychopinn import port_factor
        >>> from physscale.nn import IntensityScaler
        >>> port_factor(IntensityScaler(32.0))
        0.03125
    """
    return 1.0 / float(scaler.scale.detach())


# --------------------------------------------------------------------------- params and bundles


def scale_into_params(params: Mapping[str, Any], record: ScaleRecord) -> dict[str, Any]:
    """A copy of the port's params dict (a ``params.cfg`` snapshot) carrying the record's scale.

    Sets ``"intensity_scale"`` (what the port's inference multiplies by) and
    ``"physscale_record"`` (the record as a JSON string).

    Examples:
        >>> import physscale as ps
        >>> from physscale.adapters.ptychopinn import record_from_params, scale_into_params
        >>> record = ps.closed_form_scale_record(1e6, 64)
        >>> params = scale_into_params({'N': 64, 'nphotons': 1e6}, record)
        >>> params['intensity_scale'], record_from_params(params) == record
        (31.25, True)
    """
    require_record(record)
    out = dict(params)
    out[PARAMS_SCALE_KEY] = float(record.intensity_scale)
    out[PARAMS_RECORD_KEY] = record.model_dump_json()
    return out


def record_from_params(params: Mapping[str, Any], *, where: str = "params") -> ScaleRecord:
    """The scale a port params dict carries, as a [`ScaleRecord`][physscale.ScaleRecord].

    A ``"physscale_record"`` entry (written by
    [`scale_into_params`][physscale.adapters.ptychopinn.scale_into_params]) is
    validated and returned, after checking it agrees with
    ``params["intensity_scale"]``. Otherwise the port's ``intensity_scale``
    becomes an ``"explicit"`` record with the params' ``nphotons`` (source
    ``"config"``). The port writes ``intensity_scale = 1.0`` when it knew no
    scale; that value is refused, since no real dataset has it.

    Raises:
        RecordError: no usable ``intensity_scale``, or a record that
            disagrees with it.

    Examples:
        >>> from physscale.adapters.ptychopinn import record_from_params
        >>> record = record_from_params({'intensity_scale': 31.25, 'nphotons': 1e6})
        >>> record.intensity_scale, record.method, record.nphotons_source
        (31.25, 'explicit', 'config')
    """
    raw = params.get(PARAMS_SCALE_KEY)
    if raw is None:
        raise RecordError(f"{where} has no {PARAMS_SCALE_KEY!r}; the port saved no physics scale")
    scale = scalar_scale(raw, f"{where}[{PARAMS_SCALE_KEY!r}]")
    stored = params.get(PARAMS_RECORD_KEY)
    if stored is not None:
        if not isinstance(stored, str):
            raise RecordError(f"{where}[{PARAMS_RECORD_KEY!r}] must be a JSON string")
        record = parse_record_json(stored, f"{where}[{PARAMS_RECORD_KEY!r}]")
        if not math.isclose(record.intensity_scale, scale, rel_tol=1e-6):
            raise RecordError(
                f"{where} carries intensity_scale {scale!r} but its physscale record says "
                f"{record.intensity_scale!r}; one of them was edited after saving"
            )
        return record
    if scale == 1.0:
        raise RecordError(
            f"{where}[{PARAMS_SCALE_KEY!r}] is 1.0, the port's placeholder when it had no "
            f"scale to save; derive the training scale again (physscale.adapters.ptychopinn."
            f"attach) and save it with save_bundle"
        )
    nphotons = params.get("nphotons")
    if nphotons is None:
        raise RecordError(f"{where} has an intensity_scale but no 'nphotons' to record with it")
    return ScaleRecord(
        intensity_scale=scale,
        nphotons=scalar_scale(nphotons, f"{where}['nphotons']"),
        nphotons_source="config",
        method="explicit",
        data_source=where,
    )


def _bundle_zip(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix != ".zip" and p.name:
        zipped = p.with_name(p.name + ".zip")  # the port's base path ("wts.h5" -> wts.h5.zip)
        if zipped.is_file() or not p.is_file():
            p = zipped
    if not p.name:  # "" or "/": a folder, not a bundle
        raise DataFileError(f"no port bundle at {os.fspath(path)!r}")
    if not p.is_file():
        raise DataFileError(f"no port bundle at {p}")
    return p


def _params_member(names: list[str], zpath: Path, model: str | None) -> str:
    """The ``<model>/params.dill`` to read: ``model``'s, else the first of the port's two."""
    present = sorted(n.removesuffix("/" + _PARAMS) for n in names if n.endswith("/" + _PARAMS))
    if model is not None and model not in present:
        raise DataFileError(
            f"{zpath} holds no params for model {model!r}; it has params for "
            f"{present or 'no model'}"
        )
    preferred = [model] if model is not None else [m for m in _MODELS if m in present] + present
    if not preferred:
        raise DataFileError(f"{zpath} holds no <model>/params.dill; not a port bundle")
    return f"{preferred[0]}/{_PARAMS}"


def record_from_bundle(path: str | os.PathLike[str], *, model: str | None = None) -> ScaleRecord:
    """The physics scale of a port bundle (``wts.h5.zip``), as a record. Runs no code.

    Reads ``physscale_record.json`` when [`save_bundle`][physscale.adapters.ptychopinn.save_bundle]
    wrote one (and
    checks it against the bundle's params); otherwise the port's own
    ``<model>/params.dill`` ``intensity_scale``, unpickled as plain data only
    and in bounded memory (see
    [`record_from_params`][physscale.adapters.ptychopinn.record_from_params]).

    Args:
        path: the archive, or the port's base path (``.../wts.h5``; ``.zip``
            is appended as the port does).
        model: which model's params to read; default the first one present
            (``diffraction_to_obj`` or ``autoencoder``; they share one snapshot).

    Raises:
        DataFileError: no such file, not a readable zip archive, a damaged,
            encrypted, oversized or undecodable member, no params in it (or
            none for ``model``).
        UnsafeFileError: ``params.dill`` holds anything but plain data, or
            more than a params pickle needs.
        RecordError: as for
            [`record_from_params`][physscale.adapters.ptychopinn.record_from_params].
    """
    zpath = _bundle_zip(path)
    with open_archive(zpath, _WHAT) as zf:
        names = zf.namelist()
        member = _params_member(names, zpath, model)
        raw = read_member(zf, member, f"{zpath}: {member}", max_bytes=_MAX_MEMBER_BYTES)
        stored = None
        if RECORD_MEMBER in names:
            where = f"{zpath}: {RECORD_MEMBER}"
            data = read_member(zf, RECORD_MEMBER, where, max_bytes=_MAX_MEMBER_BYTES)
            try:
                stored = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFileError(f"{where} is not UTF-8 text ({exc.reason})") from None
    params = load_pickle(raw, f"{zpath}: {member}", _PARAMS_RULES)
    if not isinstance(params, dict):
        raise DataFileError(f"{zpath}: {member} holds {type(params).__name__}, not a dict")
    if stored is not None:
        params = {**params, PARAMS_RECORD_KEY: stored}
    return record_from_params(params, where=f"{zpath.name}:{member}")


def save_bundle(
    models: Mapping[str, torch.nn.Module],
    base_path: str | os.PathLike[str],
    config: Any,
    record: ScaleRecord,
) -> Path:
    """Save a port bundle with the port's own writer, carrying ``record``'s scale.

    The port's ``model_manager.save_torch_bundle(models, ..., config,
    intensity_scale=record.intensity_scale)`` writes its archive in a scratch
    folder (so its ``load_torch_bundle`` and inference read the scale as
    always); ``<base_path>.zip`` is then written as a new archive, the port's
    members plus ``physscale_record.json``, and put in place in one step. An
    existing bundle there is never edited: if anything fails it stays as it was.

    Args:
        models: the port's models by name (``{"autoencoder": ...,
            "diffraction_to_obj": ...}``).
        base_path: the port's base path (``.../wts.h5``; it writes ``wts.h5.zip``).
        config: the port's ``TrainingConfig``.
        record: the scale to save (the trained one, if it trained).

    Returns:
        The archive's path.

    Raises:
        ModuleNotFoundError: the port is not importable (says how to get it).
        DataFileError: the archive could not be written (the old one is unchanged).
    """
    require_record(record)
    manager = require_host(
        "ptycho_torch.model_manager", _INSTALL, "physscale.adapters.ptychopinn.save_bundle"
    )
    zpath = Path(f"{base_path}.zip")
    zpath.parent.mkdir(parents=True, exist_ok=True)  # as the port's writer does
    with tempfile.TemporaryDirectory(prefix="physscale-port-bundle-") as scratch:
        base = Path(scratch) / (Path(base_path).name or "wts.h5")
        scale = float(record.intensity_scale)
        manager.save_torch_bundle(dict(models), str(base), config, intensity_scale=scale)
        members = {RECORD_MEMBER: record.model_dump_json().encode()}
        add_members(Path(f"{base}.zip"), zpath, members, what=_WHAT)
    return zpath
