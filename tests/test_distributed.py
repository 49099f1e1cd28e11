"""Reducing the scale over torch.distributed ranks: real processes, gloo, 127.0.0.1."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

import physscale as ps
from physscale.distributed import batch_data, derive_from_dataloader

WORLD = 3
N_PATTERNS = 12
NPHOTONS = 1e6
# Uneven shards, one empty: rank 0 gets 7 patterns, rank 1 none, rank 2 five.
SHARDS: list[list[int]] = [[0, 3, 5, 6, 8, 10, 11], [], [1, 2, 4, 7, 9]]
BATCH_SIZES = [3, 4, 2]


def _dataset() -> torch.Tensor:
    """Normalized-looking amplitudes whose per-pattern sums differ widely."""
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(N_PATTERNS, 2, 8, 8, generator=g, dtype=torch.float64)
    weights = torch.logspace(-3, 3, N_PATTERNS, dtype=torch.float64).reshape(-1, 1, 1, 1)
    return (x * weights.sqrt()).to(torch.float32)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _outcome(fn: Any) -> dict[str, Any]:
    try:
        return {"ok": fn()}
    except ps.PhysscaleError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x = _dataset()
        loader = DataLoader(
            TensorDataset(x), batch_size=BATCH_SIZES[rank], sampler=SHARDS[rank], shuffle=False
        )
        results: dict[str, Any] = {}
        results["record"] = derive_from_dataloader(
            loader, nphotons=NPHOTONS, data_source="shards"
        ).model_dump_json()

        def unreduced() -> float:
            record = derive_from_dataloader(loader, nphotons=NPHOTONS, reduce=False)
            return record.n_patterns or 0

        results["local"] = _outcome(unreduced)

        def mixed_domains() -> int:
            acc = ps.IntensityAccumulator(domain="intensity" if rank == 1 else "amplitude")
            acc.update(torch.ones(1, 4, 4))
            return acc.all_reduce().n_patterns

        results["mixed_domains"] = _outcome(mixed_domains)

        def mixed_shapes() -> int:
            acc = ps.IntensityAccumulator()
            acc.update(torch.ones(2, 4, 5 if rank == 2 else 4))
            before = acc.state_dict()
            try:
                return acc.all_reduce().n_patterns
            finally:
                # A refused reduction leaves the rank's own state untouched.
                results["state_kept"] = acc.state_dict() == before

        results["mixed_shapes"] = _outcome(mixed_shapes)

        def totals_and_mask() -> dict[str, Any]:
            # Per-pattern totals (second, padded gather) and mask statistics travel too.
            acc = ps.IntensityAccumulator(keep_pattern_totals=True)
            mask = torch.ones(8, 8, dtype=torch.bool)
            mask[:2] = False
            for start in range(0, len(SHARDS[rank]), BATCH_SIZES[rank]):
                acc.update(x[SHARDS[rank][start : start + BATCH_SIZES[rank]]], mask=mask)
            acc.all_reduce()
            totals = acc.pattern_totals
            assert totals is not None
            return {
                "totals": totals.tolist(),
                "pixel_fraction": acc.masked_pixel_fraction,
                "intensity_fraction": acc.masked_intensity_fraction,
            }

        results["totals_and_mask"] = _outcome(totals_and_mask)

        def keeping_beside_non_keeping() -> int:
            acc = ps.IntensityAccumulator(keep_pattern_totals=rank != 1)
            acc.update(torch.ones(2, 4, 4))
            return acc.all_reduce().n_patterns

        results["keeping_mixed"] = _outcome(keeping_beside_non_keeping)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(WORLD)]


def _reference_scale() -> float:
    """sqrt(nphotons / mean per-pattern sum(x**2)), with exact fsum sums in float64."""
    x = _dataset().to(torch.float64).numpy()
    per_pattern = [math.fsum((p.astype(np.float64) ** 2).ravel()) for p in x.reshape(-1, 8, 8)]
    return math.sqrt(NPHOTONS / (math.fsum(per_pattern) / len(per_pattern)))


def test_every_rank_gets_the_same_record_bitwise(rank_results: list[dict[str, Any]]) -> None:
    records = [ps.ScaleRecord.model_validate_json(r["record"]) for r in rank_results]
    scales = [r.intensity_scale for r in records]
    assert scales[0] == scales[1] == scales[2]
    assert {r.n_patterns for r in records} == {N_PATTERNS * 2}
    assert {r.mean_intensity for r in records} == {records[0].mean_intensity}


def test_reduced_scale_equals_single_process_scale(rank_results: list[dict[str, Any]]) -> None:
    record = ps.ScaleRecord.model_validate_json(rank_results[0]["record"])
    x = _dataset()
    # One process over the same batches: exactly the same bits.
    single = ps.IntensityAccumulator()
    for shard, size in zip(SHARDS, BATCH_SIZES, strict=True):
        for start in range(0, len(shard), size):
            single.update(x[shard[start : start + size]])
    assert record.intensity_scale == float(single.intensity_scale(NPHOTONS))
    # One call on the whole dataset, and an independent fsum reference.
    whole = float(ps.derive_intensity_scale(x, NPHOTONS))
    assert record.intensity_scale == pytest.approx(whole, rel=1e-15)
    assert record.intensity_scale == pytest.approx(_reference_scale(), rel=1e-15)


def test_reduce_false_keeps_each_rank_local(rank_results: list[dict[str, Any]]) -> None:
    assert rank_results[0]["local"] == {"ok": len(SHARDS[0]) * 2}
    assert rank_results[2]["local"] == {"ok": len(SHARDS[2]) * 2}
    # The empty shard alone has no scale.
    assert rank_results[1]["local"]["error"] == "EmptyInputError"


def test_all_reduce_refuses_mixed_domains_on_every_rank(
    rank_results: list[dict[str, Any]],
) -> None:
    for result in rank_results:
        assert result["mixed_domains"]["error"] == "StateError"
        assert "domain" in result["mixed_domains"]["message"]


def test_all_reduce_refuses_mixed_pattern_shapes_and_keeps_state(
    rank_results: list[dict[str, Any]],
) -> None:
    for result in rank_results:
        assert result["mixed_shapes"]["error"] == "StateError"
        assert "pattern shape" in result["mixed_shapes"]["message"]
        assert result["state_kept"] is True


def test_per_pattern_totals_and_mask_fractions_are_reduced_in_rank_order(
    rank_results: list[dict[str, Any]],
) -> None:
    x = _dataset().to(torch.float64)
    order = [i for shard in SHARDS for i in shard]  # rank 0's patterns, then rank 2's
    expected = [math.fsum((x[i, c, 2:] ** 2).ravel().tolist()) for i in order for c in (0, 1)]
    removed = math.fsum((x[:, :, :2] ** 2).ravel().tolist())
    kept = math.fsum((x[:, :, 2:] ** 2).ravel().tolist())
    for result in rank_results:
        got = result["totals_and_mask"]["ok"]
        assert got["totals"] == pytest.approx(expected, rel=1e-14)
        assert got["pixel_fraction"] == pytest.approx(16 / 64, rel=1e-15)
        assert got["intensity_fraction"] == pytest.approx(removed / (removed + kept), rel=1e-12)


def test_ranks_keeping_totals_refuse_a_rank_without_them(
    rank_results: list[dict[str, Any]],
) -> None:
    # Every rank decides alike whether totals travel; the keeping ranks then refuse.
    for rank, result in enumerate(rank_results):
        if rank == 1:
            assert result["keeping_mixed"] == {"ok": 6}
        else:
            assert result["keeping_mixed"]["error"] == "StateError"
            assert "keep_pattern_totals" in result["keeping_mixed"]["message"]


def test_all_reduce_without_process_group_raises_state_error() -> None:
    assert not dist.is_initialized()
    acc = ps.IntensityAccumulator().update(torch.ones(2, 4, 4))
    with pytest.raises(ps.errors.StateError, match=r"initialized torch\.distributed process group"):
        acc.all_reduce()


def test_derive_from_dataloader_without_process_group_is_local() -> None:
    x = _dataset()
    loader = DataLoader(TensorDataset(x), batch_size=5)
    record = derive_from_dataloader(loader, nphotons=NPHOTONS)
    assert record.n_patterns == N_PATTERNS * 2
    assert record.intensity_scale == pytest.approx(_reference_scale(), rel=1e-15)
    assert record.nphotons_source == "explicit"


def test_derive_from_dataloader_resolves_nphotons_from_metadata_before_reading() -> None:
    metadata = {"physics_parameters": {"nphotons": 5e5}}

    class Exploding:
        def __iter__(self) -> Any:
            raise AssertionError("the loader must not be read when nphotons is missing")

    with pytest.raises(ps.errors.NphotonsError, match="nphotons was not given"):
        derive_from_dataloader(Exploding())
    record = derive_from_dataloader([{"X": _dataset()}], metadata=metadata)
    assert (record.nphotons, record.nphotons_source) == (5e5, "metadata")


def test_batch_data_finds_amplitudes_in_tensors_dicts_and_tuples() -> None:
    x = torch.ones(2, 3, 3)
    y = torch.zeros(2)
    assert batch_data(x) is x
    assert batch_data((x, y)) is x
    assert batch_data([y, x], key=1) is x
    assert batch_data({"diffraction": x, "label": y}) is x
    assert batch_data({"amps": x}, key="amps") is x


@pytest.mark.parametrize(
    ("batch", "key", "match"),
    [
        ({"amps": torch.ones(1)}, None, r"needs key=\.\.\."),
        ({"X": torch.ones(1), "diffraction": torch.ones(1)}, None, r"needs key=\.\.\."),
        ({"X": torch.ones(1)}, "Y", "has no 'Y' entry"),
        ((torch.ones(1),), 3, "does not index"),
        (torch.ones(1), "X", "but the batch is a Tensor"),
    ],
)
def test_batch_data_rejects_unfindable_data(batch: Any, key: Any, match: str) -> None:
    with pytest.raises(ps.errors.StateError, match=match):
        batch_data(batch, key)
