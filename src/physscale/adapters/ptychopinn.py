"""PtychoPINN's PyTorch port (``ptycho_torch``): its container, its loss slot, its bundles.

The port's conventions, and where physscale meets them:

- **Data.** Its ``PtychoDataContainerTorch`` holds ``X``, the normalized
  diffraction amplitudes, channels-last ``(n, N, N, C)`` with ``C =
  gridsize**2``, and optionally ``metadata`` (PtychoPINN's schema). The
  port's own derivation guesses the channel axis (the smallest non-batch
  axis). :func:`attach` takes the layout from the container (``"NHWC"``), so
  no default axis is ever used, and writes the port's own field
  ``physics_scaling_constant`` (a ``(1, 1, 1)`` float32 tensor, what the
  port's loaders hand to ``compute_loss``) plus ``physscale_record``. The
  port's ``nphotons_source`` / ``nphotons_resolved`` fields (its own
  vocabulary) are left alone; physscale's source is in the record.
- **Loss.** ``PtychoPINN_Lightning.compute_loss`` multiplies ``pred`` and the
  observations by ``physics_scaling_constant`` and then calls
  ``self.Loss(pred_physics, obs_physics)``: photon-count *amplitudes*, one
  value per sample (``Independent(Poisson(lam), 3)``), then takes the batch
  mean and divides by the detached ``mean(obs)``. The loss in that slot is
  therefore the count-native use of :func:`physscale.scaled_poisson_nll`:
  scale 1, ``form="exact"``, ``reduction="per_sample"``
  (:func:`poisson_loss`; :func:`install_loss` puts it in the slot without
  adding ``state_dict`` keys).
- **Bundles.** The port saves ``wts.h5.zip`` archives whose per-model
  ``params.dill`` (a pickle) holds ``intensity_scale``: the physics scale
  its inference multiplies by. :func:`save_bundle` writes that value from a
  record and adds the record itself as ``physscale_record.json``;
  :func:`record_from_bundle` reads it back, and reads the scale of a bundle
  the port wrote alone without executing its pickle.
- **Scaler.** The port's ``IntensityScalerModule`` multiplies in ``scale(x, f)``
  where physscale's :class:`~physscale.nn.IntensityScaler` divides in
  ``normalize`` (and divides in ``inv_scale`` where physscale multiplies in
  ``denormalize``): :func:`scaler_from_port` and :func:`port_factor` convert.

The port is imported only by :func:`save_bundle` (and its model only by the
objects you pass in); everything else works on duck-typed objects.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch

from physscale.adapters._host import require_host
from physscale.attach import RECORD_FIELD as _ATTACH_RECORD_FIELD
from physscale.attach import check_attach_arguments
from physscale.core.likelihood import scalar_scale
from physscale.errors import DataFileError, RecordError, StateError, UnsafeFileError
from physscale.nn import IntensityScaler, ScaledPoissonNLLLoss
from physscale.record import ScaleRecord, derive_scale_record

__all__ = [
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

#: The layout of the port's ``X``: ``(n, N, N, C)``, channels last.
LAYOUT = "NHWC"
#: The port's own container field for the physics scale (its loaders read it).
SCALE_FIELD = "physics_scaling_constant"
#: Where :func:`attach` puts the :class:`~physscale.ScaleRecord` (not a port field;
#: the same field as :func:`physscale.attach_intensity_scale`).
RECORD_FIELD = _ATTACH_RECORD_FIELD
#: The archive member :func:`save_bundle` adds to a port bundle.
RECORD_MEMBER = "physscale_record.json"
#: The port's params key for the physics scale (``params.dill``, ``params.cfg``).
PARAMS_SCALE_KEY = "intensity_scale"
#: The params key :func:`scale_into_params` adds for the record (a JSON string).
PARAMS_RECORD_KEY = "physscale_record"

_INSTALL = (
    "the PtychoPINN source on sys.path (it is not on PyPI: clone github.com/hoidn/PtychoPINN "
    "and add the folder holding ptycho_torch/ to PYTHONPATH)"
)
_MAX_MEMBER_BYTES = 16 * 2**20


# --------------------------------------------------------------------------- data


def _is_port_container(container: Any) -> bool:
    kind = type(container)
    return kind.__name__ == "PtychoDataContainerTorch" and kind.__module__.startswith(
        "ptycho_torch"
    )


def container_layout(container: Any) -> str:
    """The layout of a port container's ``X``: always ``"NHWC"``, checked against its shape.

    Args:
        container: a ``ptycho_torch`` ``PtychoDataContainerTorch``, or a dict
            holding ``"X"`` in the port's shape ``(n, N, N, C)``.

    Raises:
        StateError: not a port container, or its ``X`` is not ``(n, N, N, C)``
            with square patterns (then pass the data to
            :func:`physscale.derive_scale_record` with an explicit ``layout``).
    """
    if isinstance(container, Mapping):
        x = container.get("X")
    elif _is_port_container(container):
        x = getattr(container, "X", None)
    else:
        raise StateError(
            f"{type(container).__name__} is not the port's PtychoDataContainerTorch or a dict "
            f"with 'X'; its layout is unknown, so derive the scale with an explicit layout= "
            f"(physscale.attach_intensity_scale(container, layout=...))"
        )
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 4 or shape[1] != shape[2]:
        raise StateError(
            f"the port's X is (n, N, N, C) with C = gridsize**2, got shape {shape}; pass the "
            f"data to physscale.derive_scale_record with the layout it really has"
        )
    return LAYOUT


def _set(container: Any, name: str, value: Any) -> None:
    if isinstance(container, MutableMapping):
        container[name] = value
    else:
        setattr(container, name, value)


def _get(container: Any, name: str) -> Any:
    if isinstance(container, Mapping):
        return container.get(name)
    return getattr(container, name, None)


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

    nphotons is resolved the physscale way (SPEC §4): ``nphotons`` >
    ``container.metadata`` > ``config`` (the port's ``TrainingConfig`` has
    ``nphotons``) > ``default``; the layout comes from the container
    (:func:`container_layout`), never from a default.

    Afterwards the container holds:

    - ``physics_scaling_constant``: the scale, a ``(1, 1, 1)`` float32 tensor,
      exactly where and how the port keeps it (its ``_ensure_container`` then
      keeps it instead of deriving its own);
    - ``physscale_record``: the :class:`~physscale.ScaleRecord`.

    The port's ``nphotons_source`` and ``nphotons_resolved`` are not touched.

    Args:
        container: the port's ``PtychoDataContainerTorch`` (or a dict with
            ``"X"``), ``X`` normalized amplitudes ``(n, N, N, C)``.
        nphotons: the explicit value, as for :func:`physscale.resolve_nphotons`.
        config: as for :func:`physscale.resolve_nphotons`.
        default: as for :func:`physscale.resolve_nphotons`.
        record: attach this record instead of deriving one (validation, test
            and inference containers carry the *training* scale).
        overwrite: replace a ``physscale_record`` already attached.

    Returns:
        The attached record.

    Raises:
        StateError: not a port container, a record already attached, or
            ``record`` given together with derivation arguments.
        And every error of :func:`physscale.derive_scale_record`.
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
    _set(container, SCALE_FIELD, _port_scale_tensor(record.intensity_scale))
    _set(container, RECORD_FIELD, record)
    return record


def _port_scale_tensor(scale: float) -> torch.Tensor:
    # The port keeps (1, 1, 1) float32 (components._attach_physics_scale).
    return torch.tensor(scale, dtype=torch.float32).view(1, 1, 1)


# --------------------------------------------------------------------------- loss


def poisson_loss(*, eps: float = 1e-12, persistent: bool = False) -> ScaledPoissonNLLLoss:
    """The port's Poisson loss as a physscale module, for its ``Loss`` slot.

    ``compute_loss`` hands the slot photon-count amplitudes (it has already
    multiplied by ``physics_scaling_constant``), so this is
    ``ScaledPoissonNLLLoss(1.0, form="exact", reduction="per_sample")``:
    ``-log Poisson((obs)**2; (pred)**2)`` summed over ``(N, N, C)``, one
    value per sample, exactly the port's ``PoissonLoss`` (float64: 2.5e-14
    relative), with finite gradients where the rate and the counts are both
    0 (the port's ``log_prob`` gives NaN there).

    Args:
        eps: floor on the rate inside the logarithm, in counts. ``eps=0.0``
            reproduces the port's gradients also where the predicted rate is
            below ``1e-12`` but photons were counted (see docs/poisson-nll.md).
        persistent: keep the module's fixed scale (1) out of ``state_dict``
            (the default), so a model with this loss in a slot has the same
            ``state_dict`` keys as with the port's own loss.
    """
    return ScaledPoissonNLLLoss(  # type: ignore[call-arg,unused-ignore]
        1.0,
        domain="amplitude",
        form="exact",
        reduction="per_sample",
        eps=eps,
        persistent=persistent,
    )


def install_loss(
    model: torch.nn.Module, *, eps: float = 1e-12, persistent: bool = False
) -> ScaledPoissonNLLLoss:
    """Put :func:`poisson_loss` in a ``PtychoPINN_Lightning``'s ``Loss`` slot.

    Args:
        model: the port's ``PtychoPINN_Lightning`` (unsupervised, amplitude
            forward, Poisson loss: the path that multiplies by
            ``physics_scaling_constant`` before calling ``self.Loss``).
        eps: as for :func:`poisson_loss`.
        persistent: as for :func:`poisson_loss`.

    Returns:
        The installed loss module.

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
    """An :class:`~physscale.nn.IntensityScaler` that computes what the port's scaler does.

    The port's ``IntensityScalerModule.scale(x, f)`` returns ``x * f`` and
    ``inv_scale(x, f)`` returns ``x / f``, with ``f = exp(log_scale)`` when it
    has a (trainable) ``log_scale`` and the ``scale_factor`` passed per call
    otherwise. physscale's ``normalize(x) = x / s`` and ``denormalize(y) = y * s``,
    so ``s = 1 / f``: the returned scaler's ``normalize`` equals the port's
    ``scale`` and its ``denormalize`` the port's ``inv_scale``.

    Note that the port initialises ``log_scale`` to ``log(intensity_scale)``
    and *multiplies* by it, where TF divides by it (SPEC failure mode 2).
    This function reproduces what the port computes; to get TF's behaviour
    from the port's configured ``intensity_scale`` use
    ``IntensityScaler(model_config.intensity_scale)``.

    Args:
        port_scaler: the port's ``IntensityScalerModule`` (its ``log_scale``
            is used when not None), or None.
        scale_factor: the factor ``f`` the port passes per call, used when
            the scaler has no ``log_scale``: a positive number or 0-d tensor.
        trainable: whether the returned scaler's log-scale trains.

    Raises:
        StateError: neither a ``log_scale`` nor a ``scale_factor`` to read.
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
    """
    return 1.0 / float(scaler.scale.detach())


# --------------------------------------------------------------------------- params and bundles


def scale_into_params(params: Mapping[str, Any], record: ScaleRecord) -> dict[str, Any]:
    """A copy of the port's params dict carrying the record's scale.

    Sets ``params["intensity_scale"]`` (the physics scale the port's inference
    multiplies by, ``inference._run_inference_and_reconstruct``) and
    ``params["physscale_record"]`` (the record as a JSON string).

    Args:
        params: the port's params (``params.cfg`` snapshot, a dict).
        record: the scale to carry (its current, trained value).
    """
    if not isinstance(record, ScaleRecord):
        raise RecordError(f"record must be a physscale.ScaleRecord, got {type(record).__name__}")
    out = dict(params)
    out[PARAMS_SCALE_KEY] = float(record.intensity_scale)
    out[PARAMS_RECORD_KEY] = record.model_dump_json()
    return out


def record_from_params(params: Mapping[str, Any], *, where: str = "params") -> ScaleRecord:
    """The scale a port params dict carries, as a :class:`~physscale.ScaleRecord`.

    A ``"physscale_record"`` entry (written by :func:`scale_into_params`) is
    validated and returned, after checking it agrees with
    ``params["intensity_scale"]``. Otherwise the port's ``intensity_scale``
    becomes an ``"explicit"`` record with the params' ``nphotons`` (source
    ``"config"``). The port writes ``intensity_scale = 1.0`` when it knew no
    scale; that value is refused, since no real dataset has it.

    Raises:
        RecordError: no usable ``intensity_scale``, or a record that
            disagrees with it.
    """
    raw = params.get(PARAMS_SCALE_KEY)
    if raw is None:
        raise RecordError(f"{where} has no {PARAMS_SCALE_KEY!r}; the port saved no physics scale")
    scale = scalar_scale(raw, f"{where}[{PARAMS_SCALE_KEY!r}]")
    stored = params.get(PARAMS_RECORD_KEY)
    if stored is not None:
        if not isinstance(stored, str):
            raise RecordError(f"{where}[{PARAMS_RECORD_KEY!r}] must be a JSON string")
        record = _validated_record(stored, f"{where}[{PARAMS_RECORD_KEY!r}]")
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


def _validated_record(text: str, where: str) -> ScaleRecord:
    try:
        return ScaleRecord.model_validate_json(text)
    except ValueError as exc:
        raise RecordError(f"{where} is not a valid physscale record: {exc}") from None


#: The only globals a port params pickle may name: value constructors that run no
#: user code (paths in the config, numpy scalars from numpy-typed settings).
_DATA_GLOBALS = frozenset(
    {
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
        ("pathlib", "Path"),
        ("collections", "OrderedDict"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }
)


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: every class or function outside ``_DATA_GLOBALS`` is refused.

    The port's ``params.dill`` is a dict of numbers, strings, booleans, None
    (and perhaps paths or numpy scalars); a pickle that names any other
    callable could run code, so it never loads.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DATA_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeFileError(
            f"params.dill references {module}.{name}; physscale reads only plain data from "
            f"a port bundle and never runs code from it"
        )


def _bundle_zip(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix != ".zip":
        zipped = p.with_name(p.name + ".zip")  # the port's base path ("wts.h5" -> wts.h5.zip)
        if zipped.is_file() or not p.is_file():
            p = zipped
    if not p.is_file():
        raise DataFileError(f"no port bundle at {p}")
    return p


def _read_member(zf: zipfile.ZipFile, member: str, where: Path) -> bytes:
    info = zf.getinfo(member)
    if info.file_size > _MAX_MEMBER_BYTES:
        raise DataFileError(f"{where}: member {member!r} is {info.file_size} bytes, too large")
    try:
        return zf.read(member)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise DataFileError(f"{where}: cannot read member {member!r} ({exc})") from None


def record_from_bundle(path: str | os.PathLike[str], *, model: str | None = None) -> ScaleRecord:
    """The physics scale of a port bundle (``wts.h5.zip``), as a record. Runs no code.

    Reads ``physscale_record.json`` when :func:`save_bundle` wrote one (and
    checks it against the bundle's params); otherwise the port's own
    ``<model>/params.dill`` ``intensity_scale``, unpickled as plain data only
    (see :func:`record_from_params`).

    Args:
        path: the archive, or the port's base path (``.../wts.h5``; ``.zip``
            is appended as the port does).
        model: which model's params to read; default the first one present
            (``diffraction_to_obj`` or ``autoencoder``; they share one snapshot).

    Raises:
        DataFileError: not a readable zip archive, or no params in it.
        UnsafeFileError: ``params.dill`` holds anything but plain data.
        RecordError: as for :func:`record_from_params`.
    """
    zpath = _bundle_zip(path)
    try:
        with zipfile.ZipFile(zpath) as zf:
            names = set(zf.namelist())
            candidates = [model] if model else ["diffraction_to_obj", "autoencoder"]
            members = [f"{m}/params.dill" for m in candidates if f"{m}/params.dill" in names]
            if not members:
                members = sorted(n for n in names if n.endswith("/params.dill"))[:1]
            if not members:
                raise DataFileError(f"{zpath} holds no <model>/params.dill; not a port bundle")
            raw = _read_member(zf, members[0], zpath)
            stored = (
                _read_member(zf, RECORD_MEMBER, zpath).decode("utf-8")
                if RECORD_MEMBER in names
                else None
            )
    except zipfile.BadZipFile as exc:
        raise DataFileError(f"{zpath} is not a zip archive ({exc})") from None
    try:
        params = _DataOnlyUnpickler(io.BytesIO(raw)).load()
    except UnsafeFileError:
        raise
    except Exception as exc:  # any malformed pickle: a data error, never a traceback
        raise DataFileError(f"{zpath}: {members[0]} is not a readable pickle ({exc})") from None
    if not isinstance(params, dict):
        raise DataFileError(f"{zpath}: {members[0]} holds {type(params).__name__}, not a dict")
    where = f"{zpath.name}:{members[0]}"
    if stored is not None:
        params = {**params, PARAMS_RECORD_KEY: stored}
    return record_from_params(params, where=where)


def save_bundle(
    models: Mapping[str, torch.nn.Module],
    base_path: str | os.PathLike[str],
    config: Any,
    record: ScaleRecord,
) -> Path:
    """Save a port bundle with the port's own writer, carrying ``record``'s scale.

    Calls ``ptycho_torch.model_manager.save_torch_bundle(models, base_path,
    config, intensity_scale=record.intensity_scale)`` (so the port's
    ``load_torch_bundle`` and inference read the scale as always), then adds
    ``physscale_record.json`` to the archive.

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
    """
    if not isinstance(record, ScaleRecord):
        raise RecordError(f"record must be a physscale.ScaleRecord, got {type(record).__name__}")
    manager = require_host(
        "ptycho_torch.model_manager", _INSTALL, "physscale.adapters.ptychopinn.save_bundle"
    )
    manager.save_torch_bundle(
        dict(models), str(base_path), config, intensity_scale=float(record.intensity_scale)
    )
    zpath = Path(f"{base_path}.zip")
    with zipfile.ZipFile(zpath, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(RECORD_MEMBER, record.model_dump_json())
    return zpath
