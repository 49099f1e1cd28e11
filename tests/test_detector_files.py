"""Real detector files in (issue 19): markers are never photons, masks have a stated polarity.

Every case of the issue, on files laid out as instruments and pipelines write
them (see ``tests/_detector_files.py``), against the truth computed
independently with numpy: the mean over patterns of the summed valid counts.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _detector_files import (
    U16_MAX,
    U32_MAX,
    eiger_master,
    eiger_scan,
    fold_slice,
    plain_h5,
    ptychodus_file,
    require_hdf5plugin,
    speckle_counts,
    uint16_saturated,
)

import physscale as ps
from physscale.core.checks import check_mask_coverage, valid_from_pixel_mask
from physscale.errors import DataFileError, MaskError, MaskWarning, UnsafeFileError
from physscale.io import list_links, normalize_files, read_metadata
from physscale.io.formats.hdf5 import check_filters
from physscale.io.nexus import data_stacks, detector_info, find_counts_key

h5py = pytest.importorskip("h5py")

REL = 1e-12


def _target(h: int, w: int) -> float:
    return h * w / 4.0


# --------------------------------------------------------------- 1. markers are not photons


def test_eiger_uint32_markers_are_excluded_by_default_and_counted() -> None:
    scan = eiger_scan()
    with pytest.warns(MaskWarning, match=r"792 pixel value\(s\).*4294967295.*never counted"):
        x, record = ps.normalize_counts(scan.counts)
    # Without a mask the markers alone say where the bad pixels are: the true nphotons.
    assert record.nphotons == pytest.approx(scan.nphotons, rel=REL)
    assert np.all(x[~scan.valid] == 0)
    assert record.masked and record.masked_pixel_fraction == pytest.approx(792 / scan.counts.size)
    # A hot pixel the mask lists but whose counts are real numbers is data without the mask.
    hot = scan.counts.copy()
    hot[:, 7, 9] = 10**6
    with pytest.warns(MaskWarning):
        _, r_hot = ps.normalize_counts(hot)
    assert r_hot.nphotons == pytest.approx(scan.nphotons + 10**6, rel=REL)
    _, r_masked = ps.normalize_counts(hot, mask=scan.pixel_mask == 0)
    assert r_masked.nphotons == pytest.approx(scan.nphotons, rel=REL)
    hot_total = 10**6 * scan.counts.shape[0]
    real = scan.nphotons * scan.counts.shape[0]
    assert r_masked.masked_intensity_fraction == pytest.approx(
        hot_total / (hot_total + real), rel=1e-9
    )


def test_eiger_with_its_pixel_mask_gives_the_true_nphotons_and_no_marker_warning() -> None:
    scan = eiger_scan()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskWarning)
        x, record = ps.normalize_counts(scan.counts, mask=valid_from_pixel_mask(scan.pixel_mask))
    assert record.nphotons == pytest.approx(scan.nphotons, rel=REL)
    assert record.nphotons_source == "measured"
    # 0 at every excluded pixel: no sqrt(2**32-1) survives to a file without its mask.
    assert np.all(x[~scan.valid] == 0)
    back = (record.intensity_scale * x) ** 2
    np.testing.assert_allclose(back[scan.valid], scan.counts[scan.valid], rtol=1e-12)
    # derive on x with the same mask gives the same scale
    again = ps.derive_scale_record(x, nphotons=record.nphotons, mask=scan.pixel_mask == 0)
    assert again.intensity_scale == pytest.approx(record.intensity_scale, rel=1e-14)
    assert record.masked_pixel_fraction == pytest.approx(np.mean(scan.pixel_mask != 0))


def test_uint16_saturation_markers_are_excluded() -> None:
    scan = uint16_saturated()
    with pytest.warns(MaskWarning, match="65535"):
        _, record = ps.normalize_counts(scan.counts)
    assert record.nphotons == pytest.approx(scan.nphotons, rel=REL)


def test_explicit_invalid_values_and_max_valid() -> None:
    counts = speckle_counts(4, 16, 16).astype(np.float64)
    counts[:, 0, 0] = -1.0
    counts[:, 1, 1] = 1e9
    valid = np.ones(counts.shape, bool)
    valid[:, 0, 0] = valid[:, 1, 1] = False
    truth = float(np.where(valid, counts, 0).sum(axis=(1, 2)).mean())
    with pytest.warns(MaskWarning, match="above 1e\\+06"):
        _, record = ps.normalize_counts(counts, invalid_values=(-1.0,), max_valid=1e6)
    assert record.nphotons == pytest.approx(truth, rel=REL)
    # () turns the default off: then the marker is data (and a valid-pixel check).
    ints = speckle_counts(2, 8, 8).astype(np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskWarning)
        _, r = ps.normalize_counts(ints, invalid_values=())
    assert r.nphotons == pytest.approx(float(ints.sum(axis=(1, 2)).mean()))


def test_torch_integer_counts_have_the_same_marker_rule() -> None:
    scan = eiger_scan(n=4)
    t = torch.from_numpy(scan.counts.astype(np.int64))
    t[t == U32_MAX] = torch.iinfo(torch.int64).max
    with pytest.warns(MaskWarning, match="pixel value"):
        ps.normalize_counts(t)
    x, record = ps.normalize_counts(t, mask=torch.from_numpy(scan.pixel_mask == 0))
    assert isinstance(x, torch.Tensor)
    assert record.nphotons == pytest.approx(scan.nphotons, rel=REL)
    assert bool((x[torch.from_numpy(~scan.valid)] == 0).all())


# --------------------------------------------------------------- 2. mask polarity


def test_an_integer_mask_is_refused_without_ever_suggesting_astype_bool() -> None:
    scan = eiger_scan(n=2)
    for mask in (scan.pixel_mask, torch.from_numpy(scan.pixel_mask.astype(np.int32))):
        with pytest.raises(MaskError) as info:
            ps.normalize_counts(scan.counts, mask=mask)
        text = str(info.value)
        assert "astype(bool)" not in text and ".bool()" not in text
        assert "True = valid pixel" in text and "pixel_mask == 0" in text


def test_the_dtype_error_of_derive_never_advises_dropping_the_mask() -> None:
    with pytest.raises(ps.errors.DtypeError) as info:
        ps.derive_intensity_scale(np.ones((2, 8, 8), np.uint32), 1e4)
    assert "astype(bool)" not in str(info.value)


def test_an_inverted_eiger_mask_is_named_not_used() -> None:
    scan = eiger_scan()
    inverted = scan.pixel_mask != 0  # what mask.astype(bool) would have given
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaskWarning)
        with pytest.raises(MaskError, match=r"inverted mask.*True = valid pixel"):
            ps.normalize_counts(scan.counts, mask=inverted)


def test_ptychodus_bad_pixels_passed_as_valid_is_named() -> None:
    counts = speckle_counts(4, 32, 32)
    bad = np.zeros((32, 32), bool)
    bad[0, :] = True
    counts[:, bad] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaskWarning)
        with pytest.raises(MaskError, match=r"inverted.*bad_pixels"):
            ps.normalize_counts(counts, mask=bad)


def test_ptychodus_bad_pixels_in_derive_name_the_mask_not_zero_intensity() -> None:
    # ptychodus zeroes its bad pixels; passing bad_pixels (True = bad) as mask= keeps only them.
    x = 0.37 * np.sqrt(speckle_counts(4, 32, 32)).astype(np.float64)
    bad = np.zeros((32, 32), bool)
    bad[0, :] = True
    x[:, bad] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaskWarning)
        with pytest.raises(MaskError, match=r"mask looks inverted.*True = valid pixel"):
            ps.derive_intensity_scale(x, 1e5, mask=bad)
    assert float(ps.derive_intensity_scale(x, 1e5, mask=~bad)) > 0


def test_an_inverted_beamstop_mask_warns_in_derive_with_the_polarity() -> None:
    x = 0.37 * np.sqrt(speckle_counts(4, 64, 64)).astype(np.float64)
    yy, xx = np.mgrid[:64, :64]
    stop = (yy - 32) ** 2 + (xx - 32) ** 2 > 36  # True = valid: outside the beamstop
    # derive warns (a region-of-interest mask is legitimate there); it keeps 2.8 %.
    with pytest.warns(MaskWarning, match="inverted mask") as w:
        ps.derive_intensity_scale(x, 1e5, mask=~stop)
    text = " ".join(str(m.message) for m in w)
    assert "True = valid pixel" in text and "97.2%" in text
    assert "silence" not in text
    # The counts front door refuses it: there a mask is a detector's.
    counts = speckle_counts(4, 64, 64)
    with pytest.raises(MaskError, match=r"inverted mask.*True = valid pixel"):
        ps.normalize_counts(counts, mask=~stop)


def test_a_mask_removing_everything_is_refused_and_names_the_mask() -> None:
    x = np.ones((2, 8, 8))
    with pytest.raises(MaskError, match="excludes every pixel"):
        ps.derive_intensity_scale(x, 1e4, mask=np.zeros((8, 8), bool))


def test_the_mask_warning_no_longer_offers_silence() -> None:
    x = 0.37 * np.sqrt(speckle_counts(4, 64, 64)).astype(np.float64)
    yy, xx = np.mgrid[:64, :64]
    stop = (yy - 32) ** 2 + (xx - 32) ** 2 > 144
    with pytest.warns(MaskWarning) as w:
        ps.derive_intensity_scale(x, 1e5, mask=stop)
    for m in w:
        assert "silence" not in str(m.message)
        assert "True = valid pixel" in str(m.message)


def test_check_mask_coverage_for_the_loss() -> None:
    check_mask_coverage(10, 4096)  # a few per cent: fine
    with pytest.warns(MaskWarning, match="inverted mask"):
        check_mask_coverage(3000, 4096, "the loss's mask")
    with pytest.warns(MaskWarning, match="inverted mask"):
        check_mask_coverage(4094, 4096, "the loss's mask")
    with pytest.raises(MaskError, match="inverted mask"):
        check_mask_coverage(4094, 4096, "the mask", refuse=True)
    with pytest.raises(MaskError, match="every pixel"):
        check_mask_coverage(4096, 4096)


def test_normalize_counts_reports_masked_fractions_without_marker_values() -> None:
    scan = eiger_scan()
    _, record = ps.normalize_counts(scan.counts, mask=scan.pixel_mask == 0)
    assert record.masked_pixel_fraction is not None
    # The markers (2**32-1) are never intensity: the mask removed none.
    assert record.masked_intensity_fraction == 0.0


# --------------------------------------------------------------- 3. files: the front door


def test_eiger_master_normalizes_to_the_truth_and_round_trips(tmp_path: Path) -> None:
    require_hdf5plugin()
    scan = eiger_scan()
    master = eiger_master(tmp_path / "scan", scan)
    out = tmp_path / "train.npz"
    result = normalize_files(master, out, follow_links=True)
    record = result.record
    assert record.nphotons == pytest.approx(scan.nphotons, rel=REL)
    assert record.nphotons_source == "measured"
    assert result.invalid_pixels == 0  # every marker sits in a pixel the mask excludes
    assert "nonzero = bad pixel" in (result.mask_source or "")
    assert [p.name for p, _ in result.stacks] == [f"scan_data_{i:06d}.h5" for i in (1, 2, 3)]
    with np.load(out, allow_pickle=False) as z:
        x = z["diff3d"]
        mask = z["mask"]
    assert x.dtype == np.float32 and x.shape == scan.counts.shape
    np.testing.assert_array_equal(mask, scan.pixel_mask == 0)
    assert np.all(x[:, ~mask] == 0)
    back = (record.intensity_scale * x.astype(np.float64)) ** 2
    np.testing.assert_allclose(back[scan.valid], scan.counts[scan.valid], rtol=2e-6)
    meta = read_metadata(out)
    assert meta is not None
    assert meta["physics_parameters"]["nphotons"] == record.nphotons
    assert meta["physscale"]["mask_polarity"] == "True = valid pixel"
    again = ps.derive_scale_record(x, nphotons=meta["physics_parameters"]["nphotons"], mask=mask)
    assert again.intensity_scale == pytest.approx(record.intensity_scale, rel=1e-14)
    # The same as normalize_counts in memory, to the output dtype's rounding.
    x_mem, r_mem = ps.normalize_counts(scan.counts, mask=scan.pixel_mask == 0)
    assert r_mem.nphotons == record.nphotons
    np.testing.assert_allclose(x, x_mem, rtol=1e-6)
    # PtychoPINN's reader: the JSON string under _metadata.
    with np.load(out, allow_pickle=False) as z:
        assert json.loads(z["_metadata"].item())["physics_parameters"]["nphotons"] > 0


def test_eiger_master_without_follow_links_is_refused_clearly(tmp_path: Path) -> None:
    require_hdf5plugin()
    master = eiger_master(tmp_path, eiger_scan(n=4))
    with pytest.raises(UnsafeFileError, match="follow_links=True"):
        normalize_files(master, tmp_path / "o.npz")
    with pytest.raises(UnsafeFileError, match="follow_links=True"):
        ps.io.readers.pattern_source(master, "/entry/data/data_000001", counts=True)
    assert not (tmp_path / "o.npz").exists()


def test_links_leaving_the_folder_are_refused_even_through_a_symlink(tmp_path: Path) -> None:
    require_hdf5plugin()
    scan = eiger_scan(n=4)
    outside = tmp_path / "elsewhere"
    eiger_master(outside, scan)
    inside = tmp_path / "scan"
    inside.mkdir()
    os.symlink(outside / "scan_data_000001.h5", inside / "scan_data_000001.h5")
    with h5py.File(inside / "master.h5", "w") as f:
        f["/entry/data/data_000001"] = h5py.ExternalLink("scan_data_000001.h5", "/entry/data/data")
    with pytest.raises(UnsafeFileError, match="outside the master's folder"):
        normalize_files(inside / "master.h5", tmp_path / "o.npz", follow_links=True)
    with h5py.File(inside / "up.h5", "w") as f:
        f["/entry/data/data_000001"] = h5py.ExternalLink(
            "../elsewhere/scan_data_000001.h5", "/entry/data/data"
        )
    with pytest.raises(UnsafeFileError, match="outside the master's folder"):
        data_stacks(inside / "up.h5", "/entry/data", True)


def test_links_are_read_in_link_name_order(tmp_path: Path) -> None:
    require_hdf5plugin()
    scan = eiger_scan(n=12)
    master = eiger_master(tmp_path, scan, frames_per_file=4)
    # Re-create the links in reverse creation order: reading follows the names.
    with h5py.File(master, "a") as f:
        group = f["/entry/data"]
        for name in ("data_000003", "data_000001", "data_000002"):
            link = group.get(name, getlink=True)
            del group[name]
            group[name] = h5py.ExternalLink(link.filename, link.path)
    stacks = data_stacks(master, "/entry/data", True)
    assert [p.name for p, _ in stacks] == [f"scan_data_{i:06d}.h5" for i in (1, 2, 3)]


def test_list_links_shows_where_the_data_are(tmp_path: Path) -> None:
    require_hdf5plugin()
    master = eiger_master(tmp_path, eiger_scan(n=8))
    links = list_links(master)
    assert [(ln.name, ln.kind, ln.file) for ln in links] == [
        ("/entry/data/data_000001", "external", "scan_data_000001.h5"),
        ("/entry/data/data_000002", "external", "scan_data_000002.h5"),
    ]


def test_a_virtual_dataset_beside_the_master_is_read_with_follow_links(tmp_path: Path) -> None:
    require_hdf5plugin()
    scan = eiger_scan(n=8)
    eiger_master(tmp_path, scan, frames_per_file=4)
    layout = h5py.VirtualLayout(shape=scan.counts.shape, dtype=np.uint32)
    for i in range(2):
        src = h5py.VirtualSource(tmp_path / f"scan_data_{i + 1:06d}.h5", "/entry/data/data",
                                 shape=(4, 32, 32))  # fmt: skip
        layout[4 * i : 4 * i + 4] = src
    vds = tmp_path / "vds.h5"
    with h5py.File(vds, "w") as f:
        f.create_virtual_dataset("/entry/data/data", layout)
        f["/entry/instrument/detector/pixel_mask"] = scan.pixel_mask
    with pytest.raises(UnsafeFileError, match="follow_links=True"):
        normalize_files(vds, tmp_path / "o.npz")
    result = normalize_files(vds, tmp_path / "o.npz", follow_links=True)
    assert result.record.nphotons == pytest.approx(scan.nphotons, rel=REL)


def test_uint16_plain_file_and_its_saturation_markers(tmp_path: Path) -> None:
    scan = uint16_saturated()
    path = plain_h5(tmp_path / "u16.h5", scan.counts)
    with pytest.warns(MaskWarning, match=r"\d+ pixel value\(s\).*65535"):
        result = normalize_files(path, tmp_path / "o.npz", chunk_bytes=2048)
    assert result.record.nphotons == pytest.approx(scan.nphotons, rel=REL)
    assert result.invalid_pixels == int((scan.counts == U16_MAX).sum())
    with np.load(tmp_path / "o.npz") as z:
        assert np.all(z["diff3d"][scan.counts == U16_MAX] == 0)
        assert "mask" not in z.files  # no pixel is bad in every frame


def test_fold_slice_float_counts_and_carried_positions(tmp_path: Path) -> None:
    dp, truth = fold_slice(tmp_path)
    assert find_counts_key(dp) == "/dp"
    result = normalize_files(dp, tmp_path / "o.npz")
    assert result.record.nphotons == pytest.approx(truth, rel=1e-9)
    with pytest.raises(DataFileError, match="carry"):
        normalize_files(dp, tmp_path / "o2.npz", carry=("ppX",))
    out = normalize_files([dp], tmp_path / "o3.npz", key="/dp").out
    assert out.exists()


def test_ptychodus_file_reads_its_bad_pixels_with_true_as_bad(tmp_path: Path) -> None:
    path, scan = ptychodus_file(tmp_path / "train.h5")
    assert find_counts_key(path) == "/patterns"
    assert detector_info(path).mask_key == "/bad_pixels"
    result = normalize_files(path, tmp_path / "o.npz", carry=("probe",))
    assert result.record.nphotons == pytest.approx(scan.nphotons, rel=REL)
    with np.load(tmp_path / "o.npz") as z:
        np.testing.assert_array_equal(z["mask"], scan.pixel_mask == 0)
        assert z["probe"].dtype == np.complex64


def test_an_explicit_mask_needs_its_polarity(tmp_path: Path) -> None:
    scan = uint16_saturated()
    path = plain_h5(tmp_path / "u16.h5", scan.counts)
    mask = np.zeros(scan.counts.shape[1:], np.uint8)
    mask[0, 0] = 1
    np.save(tmp_path / "m.npy", mask)
    with pytest.raises(MaskError, match="polarity"):
        normalize_files(path, tmp_path / "o.npz", pixel_mask=tmp_path / "m.npy")
    with pytest.raises(MaskError, match="polarity"):
        normalize_files(path, tmp_path / "o.npz", pixel_mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaskWarning)
        r = normalize_files(
            path, tmp_path / "o.npz", pixel_mask=str(tmp_path / "m.npy"), mask_polarity="bad"
        )
    assert r.masked_pixels == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaskWarning)
        with pytest.raises(MaskError, match="inverted"):
            normalize_files(path, tmp_path / "o.npz", pixel_mask=mask, mask_polarity="valid")


def test_known_layouts_and_several_candidates(tmp_path: Path) -> None:
    p = tmp_path / "two.npz"
    np.savez(p, diff3d=np.ones((2, 8, 8), np.float32), diffraction=np.ones((2, 8, 8), np.float32))
    with pytest.raises(DataFileError, match=r"several arrays.*'diff3d'.*'diffraction'"):
        find_counts_key(p)
    q = tmp_path / "one.npz"
    np.savez(q, diff3d=np.ones((2, 8, 8), np.float32), xcoords=np.zeros(2))
    assert find_counts_key(q) == "diff3d"
    r = tmp_path / "none.npz"
    np.savez(r, foo=np.ones((2, 8, 8)))
    with pytest.raises(DataFileError, match=r"none of the known pattern keys.*'foo'"):
        find_counts_key(r)


def test_a_missing_filter_is_named_with_its_install_line() -> None:
    dcpl = SimpleNamespace(get_nfilters=lambda: 1, get_filter=lambda i: (32008, 0, (), b""))
    import physscale.io.formats.hdf5 as hdf5_mod

    real = h5py.h5z.filter_avail
    try:
        h5py.h5z.filter_avail = lambda code: False
        with pytest.raises(
            DataFileError, match=r"filter 32008 \(bitshuffle.*pip install hdf5plugin"
        ):
            hdf5_mod.check_filters(dcpl, "f.h5:/entry/data/data")
    finally:
        h5py.h5z.filter_avail = real
    check_filters(dcpl, "f.h5")  # available once hdf5plugin is registered (or not asked)


def test_the_output_is_atomic_and_a_failure_leaves_nothing(tmp_path: Path) -> None:
    counts = speckle_counts(3, 16, 16).astype(np.float64)
    counts[1, 2, 2] = np.nan
    np.save(tmp_path / "c.npy", counts)
    out = tmp_path / "o.npz"
    out.write_bytes(b"previous")
    with pytest.raises(ps.errors.NonFiniteError):
        normalize_files(tmp_path / "c.npy", out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "o.npz"]


def test_streaming_matches_memory_for_npy_and_npz(tmp_path: Path) -> None:
    scan = eiger_scan(n=9)
    np.save(tmp_path / "c.npy", scan.counts)
    np.savez(tmp_path / "c.npz", patterns=scan.counts)
    _, ref = ps.normalize_counts(scan.counts, mask=scan.pixel_mask == 0, invalid_values=())
    for name in ("c.npy", "c.npz"):
        r = normalize_files(
            tmp_path / name, tmp_path / "o.npz", pixel_mask=scan.pixel_mask, mask_polarity="bad",
            chunk_bytes=4096,
        )  # fmt: skip
        assert r.record.nphotons == ref.nphotons
        assert r.record.intensity_scale == pytest.approx(ref.intensity_scale, rel=1e-6)


# --------------------------------------------------------------- per-frame masks


def _per_frame_case(n: int = 12, h: int = 16, w: int = 16) -> tuple[np.ndarray, np.ndarray, float]:
    """uint32 counts with scattered markers, a per-frame valid mask (a beamstop that moves)."""
    rng = np.random.default_rng(7)
    real = speckle_counts(n, h, w, seed=3)
    counts = real.astype(np.uint32)
    counts[rng.random(counts.shape) < 0.01] = U32_MAX  # dropped pixels, frame by frame
    counts[:, 0, 0] = U32_MAX  # dead in every frame: stored as invalid too
    valid = np.ones((n, h, w), bool)
    for i in range(n):
        valid[i, 2 + i % 4 : 5 + i % 4, 3:6] = False  # the beamstop, moving
    # The truth, independently: valid counts that are not the marker, per pattern, mean.
    ok = valid & (counts != U32_MAX)
    truth = float(np.where(ok, counts.astype(np.float64), 0.0).sum(axis=(1, 2)).mean())
    return counts, valid, truth


def test_a_per_frame_mask_array_gives_the_truth_and_is_stored_per_frame(tmp_path: Path) -> None:
    counts, valid, truth = _per_frame_case()
    np.save(tmp_path / "scan.npy", counts)
    out = tmp_path / "o.npz"
    with pytest.warns(MaskWarning, match="markers"):
        result = normalize_files(
            tmp_path / "scan.npy", out, pixel_mask=valid, mask_polarity="valid", chunk_bytes=3000
        )
    record = result.record
    assert record.nphotons == pytest.approx(truth, rel=1e-12)
    ok = valid & (counts != U32_MAX)
    assert record.masked_pixel_fraction == pytest.approx(1.0 - ok.mean(), rel=1e-12)
    with np.load(out, allow_pickle=False) as z:
        x, mask = z["diff3d"], z["mask"]
    stored = valid.copy()
    stored[:, 0, 0] = False  # a marker in every frame
    assert mask.shape == counts.shape and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, stored)
    assert np.all(x[~ok] == 0)
    back = (record.intensity_scale * x.astype(np.float64)) ** 2
    np.testing.assert_allclose(back[ok], counts[ok], rtol=2e-6)
    assert result.masked_pixels == round(float((~stored).sum()) / counts.shape[0])
    # The bad-pixel polarity of the same mask is the same result.
    with pytest.warns(MaskWarning):
        again = normalize_files(
            tmp_path / "scan.npy", tmp_path / "b.npz", pixel_mask=(~valid).astype(np.uint8),
            mask_polarity="bad",
        )  # fmt: skip
    assert again.record.nphotons == record.nphotons


@pytest.mark.parametrize("layout", ["npy", "npz", "h5"])
def test_a_per_frame_mask_file_is_streamed_with_the_frames(tmp_path: Path, layout: str) -> None:
    counts, valid, truth = _per_frame_case(n=12)
    # Two files of 5 and 7 frames: the mask's chunks never line up with the data's.
    np.save(tmp_path / "a.npy", counts[:5])
    np.save(tmp_path / "b.npy", counts[5:])
    bad = (~valid).astype(np.uint8)  # nonzero = bad, as NeXus masks are
    if layout == "npy":
        np.save(tmp_path / "m.npy", bad)
        spec, polarity = str(tmp_path / "m.npy"), "bad"
    elif layout == "npz":
        np.savez(tmp_path / "m.npz", flags=valid)
        spec, polarity = f"{tmp_path / 'm.npz'}:flags", "valid"
    else:
        with h5py.File(tmp_path / "m.h5", "w") as f:
            f.create_dataset("/entry/instrument/detector/pixel_mask", data=bad, chunks=(1, 16, 16))
        spec, polarity = f"{tmp_path / 'm.h5'}:/entry/instrument/detector/pixel_mask", None
    with pytest.warns(MaskWarning):
        result = normalize_files(
            [tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "o.npz", pixel_mask=spec,
            mask_polarity=polarity, chunk_bytes=4 * 16 * 16 * 3,
        )  # fmt: skip
    assert result.record.nphotons == pytest.approx(truth, rel=1e-12)
    with np.load(tmp_path / "o.npz", allow_pickle=False) as z:
        assert z["mask"].shape == counts.shape
        np.testing.assert_array_equal(z["mask"][:, 1:, 1:], valid[:, 1:, 1:])


def test_a_per_frame_mask_of_unstated_polarity_or_the_wrong_length_is_refused(
    tmp_path: Path,
) -> None:
    counts, valid, _ = _per_frame_case(n=6)
    np.save(tmp_path / "scan.npy", counts)
    np.save(tmp_path / "m.npy", valid)
    with pytest.raises(MaskError, match="polarity"):
        normalize_files(tmp_path / "scan.npy", tmp_path / "o.npz", pixel_mask=tmp_path / "m.npy")
    with pytest.raises(MaskError, match=r"\(6, 16, 16\)"):
        normalize_files(
            tmp_path / "scan.npy", tmp_path / "o.npz", pixel_mask=valid[:5], mask_polarity="valid"
        )
    assert not (tmp_path / "o.npz").exists()


def test_float_counts_with_a_per_frame_mask(tmp_path: Path) -> None:
    counts, valid, _ = _per_frame_case(n=8)
    floats = counts.astype(np.float64)
    floats[floats == U32_MAX] = 7.5  # no markers in floats: plain data
    truth = float(np.where(valid, floats, 0.0).sum(axis=(1, 2)).mean())
    np.save(tmp_path / "scan.npy", floats)
    result = normalize_files(
        tmp_path / "scan.npy", tmp_path / "o.npz", pixel_mask=valid, mask_polarity="valid"
    )
    assert result.record.nphotons == pytest.approx(truth, rel=1e-12)
    with np.load(tmp_path / "o.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["mask"], valid)
        assert np.all(z["diff3d"][~valid] == 0)


def test_boolean_data_are_not_counts(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", np.ones((3, 8, 8), bool))
    with pytest.raises(DataFileError, match="booleans, not counts"):
        normalize_files(tmp_path / "m.npy", tmp_path / "o.npz")


def test_an_output_that_is_an_input_or_read_only_is_refused_before_reading(
    tmp_path: Path,
) -> None:
    counts = speckle_counts(3, 8, 8).astype(np.uint16)
    scan = tmp_path / "scan.npy"
    np.save(scan, counts)
    (tmp_path / "alias.npy").symlink_to(scan)
    with pytest.raises(DataFileError, match="is also an input"):
        normalize_files(scan, tmp_path / "alias.npy")
    np.testing.assert_array_equal(np.load(scan), counts)
    locked = tmp_path / "locked.npz"
    locked.write_bytes(b"x")
    locked.chmod(0o444)
    with pytest.raises(DataFileError, match="read-only"):
        normalize_files(scan, locked)
    assert locked.read_bytes() == b"x"
