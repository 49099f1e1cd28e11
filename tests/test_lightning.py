"""PhysicsScaleCallback: derive at fit start, hand to the module, checkpoint, resume."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

import physscale as ps  # noqa: E402
from physscale.io import record_from_checkpoint  # noqa: E402
from physscale.lightning import PhysicsScaleCallback, find_scaler, restore_record  # noqa: E402
from physscale.nn import IntensityScaler  # noqa: E402

NPHOTONS = 1e5


def _amplitudes(n: int = 12, brightness: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.rand(n, 1, 8, 8, generator=g) * math.sqrt(brightness)


def _reference_scale(x: torch.Tensor, nphotons: float) -> float:
    sums = [math.fsum(p.double().square().flatten().tolist()) for p in x.reshape(-1, 8, 8)]
    return math.sqrt(nphotons / (math.fsum(sums) / len(sums)))


def _same_but_time(a: ps.ScaleRecord, b: ps.ScaleRecord) -> bool:
    """Equal records, ignoring when each was made (to_record() makes a new one)."""
    return a.model_dump(exclude={"created_utc"}) == b.model_dump(exclude={"created_utc"})


class TinyModule(pl.LightningModule):
    """A conv net with a trainable IntensityScaler at its physics boundary."""

    def __init__(self, x: torch.Tensor, trainable: bool = True) -> None:
        super().__init__()
        self.net = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.scaler = IntensityScaler(1.0, trainable=trainable)
        self.x = x
        self.seen: list[ps.ScaleRecord] = []
        self.physscale_record: ps.ScaleRecord | None = None

    def on_physscale_record(self, record: ps.ScaleRecord) -> None:
        self.seen.append(record)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "physscale_record" in checkpoint:
            restore_record(self, checkpoint)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (obs,) = batch
        pred = torch.nn.functional.softplus(self.net(obs))
        lam = self.scaler.denormalize(pred).square()
        counts = self.scaler.denormalize(obs).square()
        return (lam - counts * torch.log(lam + 1e-12)).mean() / counts.mean().detach()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.05)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(TensorDataset(self.x), batch_size=4)


def _trainer(max_steps: int, callback: PhysicsScaleCallback) -> Any:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )


@pytest.fixture(autouse=True)
def _quiet_lightning() -> Any:
    with warnings.catch_warnings():
        # Lightning's advice (workers, tiny datasets, mid-epoch resume) is not under test.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
        warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch")
        yield


def test_fit_derives_attaches_fills_scaler_and_checkpoints_trained_record(
    tmp_path: Path,
) -> None:
    x = _amplitudes()
    metadata = {"physics_parameters": {"nphotons": NPHOTONS}}
    callback = PhysicsScaleCallback(metadata=metadata, config={"nphotons": 1e9})
    module = TinyModule(x)
    initial_log_scale = module.scaler.log_scale
    trainer = _trainer(2, callback)
    trainer.fit(module)

    record = module.physscale_record
    assert record is not None
    assert callback.derivations == 1
    assert module.seen == [record]
    assert record.method == "derived"
    assert (record.nphotons, record.nphotons_source) == (NPHOTONS, "metadata")
    assert record.n_patterns == len(x)
    assert record.intensity_scale == pytest.approx(_reference_scale(x, NPHOTONS), rel=1e-12)
    # The scaler was filled in place (same parameter the optimizer holds) and trained.
    assert module.scaler.log_scale is initial_log_scale
    assert module.scaler.trainable
    assert module.scaler.initial_scale == pytest.approx(record.intensity_scale, rel=1e-12)
    assert not math.isclose(module.scaler.scale.item(), record.intensity_scale, rel_tol=1e-4)

    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    saved = record_from_checkpoint(checkpoint)
    assert _same_but_time(saved, module.scaler.to_record())
    assert saved.method == "trained"
    assert saved.initial_intensity_scale == record.intensity_scale
    assert saved.intensity_scale == pytest.approx(module.scaler.scale.item(), rel=1e-6)


def test_resume_restores_the_record_and_never_re_derives(tmp_path: Path) -> None:
    x = _amplitudes()
    first = PhysicsScaleCallback(nphotons=NPHOTONS)
    module = TinyModule(x)
    trainer = _trainer(2, first)
    trainer.fit(module)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    saved = record_from_checkpoint(torch.load(path, weights_only=True))

    # Resume on data ten times brighter: a re-derivation would change the scale.
    second = PhysicsScaleCallback(nphotons=NPHOTONS)
    resumed = TinyModule(_amplitudes(brightness=10.0))
    _trainer(4, second).fit(resumed, ckpt_path=path)
    assert second.derivations == 0
    assert resumed.physscale_record == saved
    assert resumed.seen[0] == saved
    # The scaler's trained weight came back with the module state, and trains on.
    assert resumed.scaler.to_record().initial_intensity_scale == saved.initial_intensity_scale


def test_save_then_load_from_checkpoint_gives_the_same_record(tmp_path: Path) -> None:
    x = _amplitudes()
    module = TinyModule(x, trainable=False)
    trainer = _trainer(2, PhysicsScaleCallback(nphotons=NPHOTONS))
    trainer.fit(module)
    path = tmp_path / "frozen.ckpt"
    trainer.save_checkpoint(path)
    assert module.physscale_record is not None
    # Frozen scaler: the checkpoint holds the derived record itself.
    assert record_from_checkpoint(torch.load(path, weights_only=True)) == module.physscale_record

    loaded = TinyModule.load_from_checkpoint(path, x=x, trainable=False, weights_only=True)
    assert loaded.physscale_record == module.physscale_record
    assert loaded.scaler.to_record() == module.physscale_record
    assert loaded.scaler.scale.item() == pytest.approx(module.physscale_record.intensity_scale)


def test_a_record_already_on_the_module_is_used_as_is() -> None:
    x = _amplitudes()
    preset = ps.derive_scale_record(x, nphotons=7.0e4)
    module = TinyModule(x, trainable=False)
    module.physscale_record = preset
    callback = PhysicsScaleCallback(nphotons=NPHOTONS)
    _trainer(1, callback).fit(module)
    assert callback.derivations == 0
    assert module.physscale_record is preset


def test_explicit_dataloader_and_dict_batches() -> None:
    x = _amplitudes()
    loader = [{"diffraction": x[:5]}, {"diffraction": x[5:]}]
    callback = PhysicsScaleCallback(nphotons=NPHOTONS, dataloader=loader, data_source="dicts")
    module = TinyModule(x)
    _trainer(1, callback).fit(module)
    assert module.physscale_record is not None
    assert module.physscale_record.data_source == "dicts"
    assert module.physscale_record.intensity_scale == pytest.approx(
        _reference_scale(x, NPHOTONS), rel=1e-12
    )


@pytest.mark.parametrize("wrap", ["dict", "object"])
def test_metadata_from_a_training_container_is_found_as_attach_finds_it(wrap: str) -> None:
    # Reported: PhysicsScaleCallback(metadata=train_data) ignored a dict container's
    # metadata and fell through to config (or raised).
    x = _amplitudes()
    metadata = {"physics_parameters": {"nphotons": NPHOTONS}}
    train_data: Any = {"X": x, "metadata": metadata}
    if wrap == "object":
        train_data = SimpleNamespace(**train_data)
    callback = PhysicsScaleCallback(metadata=train_data, config={"nphotons": 1e9})
    module = TinyModule(x)
    _trainer(1, callback).fit(module)
    record = module.physscale_record
    assert record is not None
    assert (record.nphotons, record.nphotons_source) == (NPHOTONS, "metadata")
    attached = ps.attach_intensity_scale(dict(train_data) if wrap == "dict" else train_data,
                                         config={"nphotons": 1e9})  # fmt: skip
    assert (attached.nphotons, attached.nphotons_source) == (record.nphotons, "metadata")


def test_resuming_from_a_checkpoint_without_a_record_is_refused(tmp_path: Path) -> None:
    x = _amplitudes()
    plain = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    plain.fit(TinyModule(x))
    path = tmp_path / "plain.ckpt"
    plain.save_checkpoint(path)
    with pytest.raises(ps.errors.RecordError, match="holds no physscale record"):
        _trainer(2, PhysicsScaleCallback(nphotons=NPHOTONS)).fit(TinyModule(x), ckpt_path=path)


def test_missing_nphotons_fails_before_training() -> None:
    with pytest.raises(ps.errors.NphotonsError, match="nphotons was not given"):
        _trainer(1, PhysicsScaleCallback()).fit(TinyModule(_amplitudes()))


def test_find_scaler_refuses_ambiguity_and_wrong_attribute() -> None:
    module = torch.nn.ModuleDict({"a": IntensityScaler(2.0), "b": IntensityScaler(3.0)})
    with pytest.raises(ps.errors.StateError, match=r"holds 2 IntensityScalers \(\['a', 'b'\]\)"):
        find_scaler(module)
    assert find_scaler(module, "b") is module["b"]
    with pytest.raises(ps.errors.StateError, match="scaler_attribute='c' is NoneType"):
        find_scaler(module, "c")
    assert find_scaler(torch.nn.Linear(2, 2)) is None


class DDPModule(TinyModule):
    """Writes each rank's record to a file (ddp_spawn children cannot return it)."""

    def __init__(self, x: torch.Tensor, out_dir: str) -> None:
        super().__init__(x)
        self.out_dir = out_dir

    def on_physscale_record(self, record: ps.ScaleRecord) -> None:
        Path(self.out_dir, f"rank{self.global_rank}.json").write_text(record.model_dump_json())


@pytest.mark.slow
def test_ddp_ranks_derive_their_shards_and_agree_on_the_dataset_scale(tmp_path: Path) -> None:
    x = _amplitudes(n=12)
    module = DDPModule(x, str(tmp_path))
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp_spawn",
        devices=2,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PhysicsScaleCallback(nphotons=NPHOTONS)],
    )
    trainer.fit(module)
    records = [
        ps.ScaleRecord.model_validate_json(Path(tmp_path, f"rank{r}.json").read_text())
        for r in range(2)
    ]
    # Each rank saw 6 patterns (DistributedSampler shards); the reduced record covers 12.
    assert records[0].model_dump(exclude={"created_utc"}) == records[1].model_dump(
        exclude={"created_utc"}
    )
    assert records[0].n_patterns == 12
    assert records[0].intensity_scale == pytest.approx(_reference_scale(x, NPHOTONS), rel=1e-12)


def test_scaler_is_filled_in_its_own_dtype_to_full_precision() -> None:
    from types import SimpleNamespace

    x = _amplitudes()
    module = TinyModule(x)
    module.scaler = IntensityScaler(1.0, trainable=True, dtype=torch.float64)
    param = module.scaler.log_scale
    callback = PhysicsScaleCallback(nphotons=NPHOTONS, dataloader=[x])
    callback.on_fit_start(SimpleNamespace(ckpt_path=None), module)  # type: ignore[arg-type]
    assert module.scaler.log_scale is param
    assert param.dtype == torch.float64
    assert param.requires_grad
    assert module.scaler.scale.item() == pytest.approx(_reference_scale(x, NPHOTONS), rel=1e-14)


def test_lightning_is_optional_and_its_absence_is_explained() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import physscale, physscale.io, physscale.nn\n"
        "assert 'lightning' not in sys.modules, 'import physscale pulled in lightning'\n"
        "sys.modules['lightning'] = None\n"
        "sys.modules['lightning.pytorch'] = None\n"
        "import physscale.lightning\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stderr
    assert "AssertionError" not in result.stderr
    assert "physscale.lightning needs PyTorch Lightning: pip install 'physscale[lightning]'" in (
        result.stderr
    )


class FrozenScalerModule(TinyModule):
    """The five-line recipe's mistake: an optimizer built without the scaler."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=0.05)


def test_fit_warns_when_the_trainable_scaler_is_in_no_optimizer() -> None:
    callback = PhysicsScaleCallback(nphotons=NPHOTONS)
    module = FrozenScalerModule(_amplitudes())
    with pytest.warns(ps.errors.FrozenScaleWarning, match="none of the 1 optimizer"):
        _trainer(1, callback).fit(module)
    # And the record claims no training.
    with pytest.warns(ps.errors.FrozenScaleWarning, match="never updated"):
        assert module.scaler.to_record().method == "derived"


def test_fit_is_quiet_when_the_optimizer_holds_the_scaler() -> None:
    callback = PhysicsScaleCallback(nphotons=NPHOTONS)
    module = TinyModule(_amplitudes())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.errors.FrozenScaleWarning)
        _trainer(2, callback).fit(module)
        assert module.scaler.to_record().method == "trained"
