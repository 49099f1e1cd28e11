"""Bundles: weights + record + manifest in one checksummed zip, loaded safely."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import physscale as ps
from physscale.io import Bundle, load_bundle, save_bundle
from physscale.nn import IntensityScaler

MEMBERS = {"manifest.json", "record.json", "state_dict.pt"}


def _data(brightness: float = 1.0) -> torch.Tensor:
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    return x * math.sqrt(brightness)


def _record() -> ps.ScaleRecord:
    return ps.derive_scale_record(_data(), nphotons=1e6, data_source="train")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns on duplicate names
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(zipfile.ZipInfo(name), data)


def _rewrite(
    path: Path,
    *,
    replace: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    fix_checksums: bool = False,
    manifest_edit: dict[str, Any] | None = None,
) -> None:
    """Rebuild a bundle with changed members; optionally recompute the manifest."""
    members = _members(path)
    members.update(replace or {})
    for name in drop:
        del members[name]
    manifest = json.loads(members["manifest.json"])
    if fix_checksums:
        for name, entry in manifest["members"].items():
            if name in members:
                entry["sha256"] = hashlib.sha256(members[name]).hexdigest()
                entry["size"] = len(members[name])
    manifest.update(manifest_edit or {})
    members["manifest.json"] = json.dumps(manifest).encode()
    _write_zip(path, members)


@pytest.fixture
def bundle_path(tmp_path: Path) -> Path:
    return save_bundle(tmp_path / "model.physscale.zip", _model().state_dict(), _record(), step=5)


# ------------------------------------------------------------------ round trip
def test_round_trip_restores_weights_record_and_extra(bundle_path: Path) -> None:
    model = _model()
    bundle = load_bundle(bundle_path)
    assert isinstance(bundle, Bundle)
    assert bundle.record == _record().model_copy(update={"created_utc": bundle.record.created_utc})
    assert bundle.extra == {"step": 5}
    assert set(bundle.state_dict) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(bundle.state_dict[name], tensor)
    fresh = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
    fresh.load_state_dict(bundle.state_dict)


def test_manifest_lists_sha256_and_size_of_every_member(bundle_path: Path) -> None:
    members = _members(bundle_path)
    assert set(members) == MEMBERS
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "physscale-bundle"
    assert manifest["format_version"] == 1
    assert manifest["physscale_version"] == ps.__version__
    assert manifest["record_schema_version"] == ps.record.SCHEMA_VERSION
    assert manifest["extra"] == {"step": 5}
    for name in ("record.json", "state_dict.pt"):
        entry = manifest["members"][name]
        assert entry == {
            "sha256": hashlib.sha256(members[name]).hexdigest(),
            "size": len(members[name]),
        }
    assert load_bundle(bundle_path).manifest == manifest


def test_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    record, state = _record(), _model().state_dict()
    a = save_bundle(tmp_path / "a.zip", state, record, note="x")
    b = save_bundle(tmp_path / "b.zip", state, record, note="x")
    assert a.read_bytes() == b.read_bytes()


def test_trained_scaler_record_survives_bundle_round_trip(tmp_path: Path) -> None:
    record = _record()
    model = torch.nn.ModuleDict({"scaler": IntensityScaler.from_record(record, trainable=True)})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        (model["scaler"].log_scale - math.log(record.intensity_scale) - 1.0).square().backward()
        optimizer.step()
    trained = model["scaler"].to_record()
    path = save_bundle(tmp_path / "b.zip", model.state_dict(), trained)
    bundle = load_bundle(path)
    assert bundle.record == trained
    assert bundle.record.method == "trained"
    assert bundle.record.initial_intensity_scale == record.intensity_scale
    assert bundle.record.intensity_scale > record.intensity_scale * 1.1
    restored = torch.nn.ModuleDict({"scaler": IntensityScaler(1.0)})
    restored.load_state_dict(bundle.state_dict)
    assert restored["scaler"].to_record().intensity_scale == trained.intensity_scale


# ------------------------------------------------------------------ inference mapping
def test_inference_uses_the_stored_scale_not_the_inference_data(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    scaler = IntensityScaler.from_record(bundle.record)
    bright = _data(brightness=10.0)
    # The inference data would derive a scale sqrt(10) times smaller...
    derived = float(ps.derive_intensity_scale(bright, bundle.record.nphotons))
    assert derived == pytest.approx(bundle.record.intensity_scale / math.sqrt(10), rel=1e-6)
    # ...but inference maps with the stored one, and running it changes nothing.
    before = scaler.scale.item()
    with torch.no_grad():
        out = scaler.denormalize(scaler.normalize(bright))
    assert torch.allclose(out, bright, rtol=1e-6)
    assert scaler.scale.item() == before
    assert scaler.to_record() == bundle.record
    assert scaler.scale.item() == pytest.approx(bundle.record.intensity_scale, rel=1e-7)


# ------------------------------------------------------------------ save refusals
@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"obj": object()}, "must be plain JSON.*not JSON serializable"),
        ({"nan": float("nan")}, "must be plain JSON.*finite"),
        ({"pair": (1, 2)}, "would not load back unchanged"),
        ({"tensor": torch.ones(1)}, "must be plain JSON"),
    ],
)
def test_non_json_extra_is_refused_and_nothing_written(
    tmp_path: Path, extra: dict[str, Any], match: str
) -> None:
    path = tmp_path / "b.zip"
    with pytest.raises(ps.errors.DtypeError, match=match):
        save_bundle(path, {}, _record(), **extra)
    assert list(tmp_path.iterdir()) == []


class _NotAllowed:
    pass


def test_state_dict_that_needs_code_to_load_is_refused_at_save(tmp_path: Path) -> None:
    with pytest.raises(ps.errors.DtypeError, match=r"torch\.load\(weights_only=True\) refuses"):
        save_bundle(tmp_path / "b.zip", {"w": _NotAllowed()}, _record())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("state", "record", "error", "match"),
    [
        ([1, 2], None, ps.errors.DtypeError, "state_dict must be a mapping"),
        ({}, 2.0, ps.errors.RecordError, "record must be a physscale.ScaleRecord, got float"),
    ],
)
def test_save_rejects_wrong_argument_types(
    tmp_path: Path, state: Any, record: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        save_bundle(tmp_path / "b.zip", state, record if record is not None else _record())


def test_failed_save_leaves_the_existing_bundle_intact(bundle_path: Path) -> None:
    before = bundle_path.read_bytes()
    with pytest.raises(ps.errors.DtypeError):
        save_bundle(bundle_path, {"w": _NotAllowed()}, _record())
    assert bundle_path.read_bytes() == before
    assert sorted(p.name for p in bundle_path.parent.iterdir()) == [bundle_path.name]


# ------------------------------------------------------------------ load refusals
@pytest.mark.parametrize("member", ["manifest.json", "record.json"])
def test_a_broken_deflate_stream_is_a_data_file_error(bundle_path: Path, member: str) -> None:
    with zipfile.ZipFile(bundle_path) as zf:
        info = zf.getinfo(member)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    raw = bytearray(bundle_path.read_bytes())
    # Local header: 30 bytes, then the name and extra field, then the deflate stream.
    lengths = raw[info.header_offset + 26 : info.header_offset + 30]
    name_len, extra_len = struct.unpack("<HH", lengths)
    start = info.header_offset + 30 + name_len + extra_len
    raw[start] = 0xFF  # a final block of the reserved type 3: "invalid block type"
    bundle_path.write_bytes(bytes(raw))
    with pytest.raises(ps.errors.DataFileError, match=f"{member}.*cannot be read"):
        load_bundle(bundle_path)


@pytest.mark.parametrize("member", ["state_dict.pt", "record.json"])
def test_tampered_member_is_an_integrity_error(bundle_path: Path, member: str) -> None:
    data = bytearray(_members(bundle_path)[member])
    data[len(data) // 2] ^= 0x01
    _rewrite(bundle_path, replace={member: bytes(data)})
    with pytest.raises(
        ps.errors.IntegrityError, match=f"member '{member}' does not match its sha256"
    ):
        load_bundle(bundle_path)


def test_member_of_a_different_size_is_an_integrity_error(bundle_path: Path) -> None:
    _rewrite(bundle_path, replace={"record.json": _members(bundle_path)["record.json"] + b" "})
    with pytest.raises(
        ps.errors.IntegrityError, match=r"'record\.json' has \d+ bytes but the manifest"
    ):
        load_bundle(bundle_path)


def test_missing_record_is_a_record_error(bundle_path: Path) -> None:
    _rewrite(bundle_path, drop=("record.json",))
    with pytest.raises(
        ps.errors.RecordError, match=r"has no record\.json: the scale record is missing"
    ):
        load_bundle(bundle_path)


def test_invalid_record_with_matching_checksum_is_a_record_error(bundle_path: Path) -> None:
    record = json.loads(_members(bundle_path)["record.json"])
    record["intensity_scale"] = -1.0
    _rewrite(bundle_path, replace={"record.json": json.dumps(record).encode()}, fix_checksums=True)
    with pytest.raises(
        ps.errors.RecordError, match="not a valid physscale ScaleRecord: intensity_scale"
    ):
        load_bundle(bundle_path)


def test_unknown_record_schema_version_is_a_record_error(bundle_path: Path) -> None:
    record = json.loads(_members(bundle_path)["record.json"])
    record["schema_version"] = 99
    _rewrite(bundle_path, replace={"record.json": json.dumps(record).encode()}, fix_checksums=True)
    with pytest.raises(ps.errors.RecordError, match="record schema version 99; this physscale"):
        load_bundle(bundle_path)


def test_unknown_bundle_format_version_is_refused(bundle_path: Path) -> None:
    _rewrite(bundle_path, manifest_edit={"format_version": 2})
    with pytest.raises(ps.errors.DataFileError, match="bundle format version 2; this physscale"):
        load_bundle(bundle_path)


def test_foreign_zip_is_not_a_bundle(bundle_path: Path) -> None:
    _rewrite(bundle_path, manifest_edit={"format": "something-else"})
    with pytest.raises(ps.errors.DataFileError, match="is not a physscale bundle: manifest format"):
        load_bundle(bundle_path)


def test_missing_manifest_is_refused(bundle_path: Path) -> None:
    members = _members(bundle_path)
    del members["manifest.json"]
    _write_zip(bundle_path, members)
    with pytest.raises(ps.errors.DataFileError, match=r"has no manifest\.json"):
        load_bundle(bundle_path)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../evil.py", "escapes its folder"),
        ("sub/../../evil.py", "escapes its folder"),
        ("/etc/passwd", "an absolute path"),
        ("..\\evil.py", "escapes its folder"),
        ("C:evil", "escapes its folder"),
        ("notes.txt", r"unexpected member\(s\) \['notes\.txt'\]"),
    ],
)
def test_unsafe_or_unexpected_member_names_are_refused(
    bundle_path: Path, name: str, match: str
) -> None:
    members = _members(bundle_path)
    members[name] = b"x"
    _write_zip(bundle_path, members)
    with pytest.raises(ps.errors.UnsafeFileError, match=match):
        load_bundle(bundle_path)


def test_duplicate_member_names_are_refused(bundle_path: Path) -> None:
    members = list(_members(bundle_path).items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(bundle_path, "w") as zf:
            for name, data in [*members, ("record.json", b"{}")]:
                zf.writestr(name, data)
    with pytest.raises(ps.errors.UnsafeFileError, match="names a member twice"):
        load_bundle(bundle_path)


_SIDE_EFFECTS: list[str] = []


def _side_effect(text: str) -> None:
    _SIDE_EFFECTS.append(text)


class _Exploit:
    def __reduce__(self) -> Any:
        return (_side_effect, ("code ran",))


def test_state_dict_that_would_run_code_is_refused_and_never_runs(bundle_path: Path) -> None:
    import io

    buffer = io.BytesIO()
    torch.save({"w": _Exploit()}, buffer)
    _rewrite(bundle_path, replace={"state_dict.pt": buffer.getvalue()}, fix_checksums=True)
    with pytest.raises(ps.errors.UnsafeFileError, match="a weights-only load refuses"):
        load_bundle(bundle_path)
    assert _SIDE_EFFECTS == []


def test_not_a_zip_truncated_and_missing_files_are_data_file_errors(
    tmp_path: Path, bundle_path: Path
) -> None:
    text = tmp_path / "plain.zip"
    text.write_text("hello")
    with pytest.raises(ps.errors.DataFileError, match="is not a readable zip file"):
        load_bundle(text)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(bundle_path.read_bytes()[: bundle_path.stat().st_size // 2])
    with pytest.raises(ps.errors.DataFileError, match=r"not a readable zip file.*truncated"):
        load_bundle(truncated)
    with pytest.raises(ps.errors.DataFileError, match="does not exist"):
        load_bundle(tmp_path / "nope.zip")


def test_manifest_that_is_not_json_is_refused(bundle_path: Path) -> None:
    members = _members(bundle_path)
    members["manifest.json"] = b"{oops"
    _write_zip(bundle_path, members)
    with pytest.raises(ps.errors.DataFileError, match=r"manifest\.json is not valid JSON"):
        load_bundle(bundle_path)


def test_manifest_member_entries_are_validated(bundle_path: Path) -> None:
    manifest = json.loads(_members(bundle_path)["manifest.json"])
    manifest["members"]["record.json"] = {"sha256": "abc", "size": 3}
    _rewrite(bundle_path, manifest_edit={"members": manifest["members"]})
    with pytest.raises(ps.errors.DataFileError, match=r"manifest entry for 'record\.json' must be"):
        load_bundle(bundle_path)


def test_errors_are_value_errors_for_callers_that_catch_builtins(bundle_path: Path) -> None:
    _rewrite(bundle_path, replace={"record.json": b"{}"})
    with pytest.raises(ValueError, match="modified or corrupted after it was written"):
        load_bundle(bundle_path)


def test_member_with_unsupported_compression_is_a_data_file_error(bundle_path: Path) -> None:
    members = _members(bundle_path)
    with zipfile.ZipFile(bundle_path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = bytearray(bundle_path.read_bytes())
    # Patch the record's compression method (local and central headers) to an unknown one.
    for header in (b"PK\x03\x04", b"PK\x01\x02"):
        start = 0
        while (at := raw.find(header, start)) != -1:
            name_len_at = at + (26 if header == b"PK\x03\x04" else 28)
            name_len = int.from_bytes(raw[name_len_at : name_len_at + 2], "little")
            name_at = at + (30 if header == b"PK\x03\x04" else 46)
            if bytes(raw[name_at : name_at + name_len]) == b"record.json":
                method_at = at + (8 if header == b"PK\x03\x04" else 10)
                raw[method_at : method_at + 2] = (99).to_bytes(2, "little")
            start = at + 4
    bundle_path.write_bytes(bytes(raw))
    with pytest.raises(
        ps.errors.DataFileError, match=r"member 'record\.json'.*compression method 99"
    ):
        load_bundle(bundle_path)


# ------------------------------------------------------------------ hostile bundles (issue 11)
def _deflated(path: Path, name: str, data: bytes) -> None:
    """Rewrite one member as deflated ``data``, with the manifest's checksum recomputed."""
    members = _members(path)
    members[name] = data
    manifest = json.loads(members["manifest.json"])
    if name in manifest["members"]:
        manifest["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for member, content in members.items():
            info = zipfile.ZipInfo(member)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, content)


def test_a_member_inflating_beyond_its_cap_is_refused_before_inflating(bundle_path: Path) -> None:
    # A 0.5 MB bundle whose record.json inflated to 512 MiB loaded at 1.25 GB.
    record = _members(bundle_path)["record.json"]
    _deflated(bundle_path, "record.json", record + b" " * (2 << 20))
    assert bundle_path.stat().st_size < 20_000
    with pytest.raises(
        ps.errors.DataFileError, match=r"member 'record\.json'.*more than the 1048576"
    ):
        load_bundle(bundle_path)


def test_compressed_weights_are_refused(bundle_path: Path) -> None:
    # Stored weights hold no more bytes than the file; deflated ones could hold 1000x.
    _deflated(bundle_path, "state_dict.pt", _members(bundle_path)["state_dict.pt"])
    with pytest.raises(ps.errors.DataFileError, match=r"'state_dict\.pt'.*stored members only"):
        load_bundle(bundle_path)


def test_compressed_records_inside_the_torch_archive_are_refused(bundle_path: Path) -> None:
    # torch.load inflates them: a decompression bomb inside the weights.
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1 << 16)}, buffer)
    inner = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(inner, "w") as dst:
        for info in src.infolist():
            copy = zipfile.ZipInfo(info.filename)
            copy.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(copy, src.read(info))
    assert torch.load(io.BytesIO(inner.getvalue()), weights_only=True)["w"].shape == (1 << 16,)
    _rewrite(bundle_path, replace={"state_dict.pt": inner.getvalue()}, fix_checksums=True)
    with pytest.raises(ps.errors.DataFileError, match=r"state_dict\.pt:.*stored members only"):
        load_bundle(bundle_path)


def test_any_damage_to_the_weights_pickle_is_a_clean_error(bundle_path: Path) -> None:
    # torch.load(weights_only=True) raised KeyError, IndexError, TypeError,
    # AttributeError... on flipped bytes (29 of 1,500), here with the manifest
    # recomputed as an attacker would.
    members = _members(bundle_path)
    with zipfile.ZipFile(io.BytesIO(members["state_dict.pt"])) as zf:
        infos = zf.infolist()
        contents = {info.filename: zf.read(info) for info in infos}
    pickle_name = next(name for name in contents if name.endswith("data.pkl"))
    original = contents[pickle_name]
    outcomes: set[str] = set()
    for position in range(len(original)):
        for value in (0x00, 0xFF, original[position] ^ 0x01):
            damaged = bytearray(original)
            damaged[position] = value
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w") as zf:
                for name, content in contents.items():
                    zf.writestr(name, bytes(damaged) if name == pickle_name else content)
            _rewrite(bundle_path, replace={"state_dict.pt": inner.getvalue()}, fix_checksums=True)
            try:
                load_bundle(bundle_path)
                outcomes.add("loaded")
            except ps.PhysscaleError as exc:
                outcomes.add(type(exc).__name__)
    assert outcomes <= {"loaded", "DataFileError", "UnsafeFileError"}, outcomes


def test_a_malicious_state_dict_message_never_suggests_weights_only_false(
    bundle_path: Path,
) -> None:
    buffer = io.BytesIO()
    torch.save({"w": _Exploit()}, buffer)
    _rewrite(bundle_path, replace={"state_dict.pt": buffer.getvalue()}, fix_checksums=True)
    with pytest.raises(ps.errors.UnsafeFileError) as info:
        load_bundle(bundle_path)
    message = str(info.value)
    assert "weights_only" not in message.replace("weights-only", "")
    assert "False" not in message
    assert "\n" not in message
    assert "it references test_bundle._side_effect" in message  # what was refused


@pytest.mark.parametrize(
    ("member", "error", "match"),
    [
        ("manifest.json", ps.errors.DataFileError, r"manifest\.json is nested too deeply"),
        ("record.json", ps.errors.RecordError, r"record\.json is nested too deeply"),
    ],
)
def test_json_nested_100k_deep_is_a_clean_error(
    bundle_path: Path, member: str, error: type[Exception], match: str
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    if member == "manifest.json":
        _write_zip(bundle_path, {**_members(bundle_path), "manifest.json": deep})
    else:
        _rewrite(bundle_path, replace={member: deep}, fix_checksums=True)
    with pytest.raises(error, match=match):
        load_bundle(bundle_path)


# ------------------------------------------------------------------ signatures (issue 11)
KEY = bytes(range(32))


def test_a_signed_bundle_verifies_with_its_key(tmp_path: Path) -> None:
    path = save_bundle(tmp_path / "s.zip", _model().state_dict(), _record(), key=KEY, step=1)
    assert set(_members(path)) == {*MEMBERS, "signature.json"}
    bundle = load_bundle(path, key=KEY)
    assert bundle.authenticated is True
    assert bundle.extra == {"step": 1}
    plain = load_bundle(path)  # without a key: integrity only
    assert plain.authenticated is False
    assert plain.record == bundle.record


def test_a_bundle_edited_by_someone_without_the_key_fails_verification(tmp_path: Path) -> None:
    # The manifest checksum alone passes whoever edits a member and recomputes it.
    path = save_bundle(tmp_path / "s.zip", _model().state_dict(), _record(), key=KEY)
    forged = ps.derive_scale_record(_data(), nphotons=4e6, data_source="forged")
    _rewrite(path, replace={"record.json": forged.model_dump_json().encode()}, fix_checksums=True)
    assert load_bundle(path).record.nphotons == 4e6  # integrity holds; authenticity does not
    with pytest.raises(ps.errors.IntegrityError, match="modified after it was signed"):
        load_bundle(path, key=KEY)


def test_a_wrong_key_or_a_missing_signature_is_refused(tmp_path: Path, bundle_path: Path) -> None:
    signed = save_bundle(tmp_path / "s.zip", _model().state_dict(), _record(), key=KEY)
    with pytest.raises(ps.errors.IntegrityError, match="signed with a different key"):
        load_bundle(signed, key=bytes(32))
    with pytest.raises(ps.errors.IntegrityError, match="is not signed, but a key was given"):
        load_bundle(bundle_path, key=KEY)
    _rewrite(signed, drop=("signature.json",))
    with pytest.raises(ps.errors.IntegrityError, match="is not signed"):
        load_bundle(signed, key=KEY)


@pytest.mark.parametrize(
    ("key", "match"),
    [("a passphrase of text", "must be bytes.*not str"), (b"short", "at least 16"), (3, "bytes")],
)
def test_keys_that_are_not_secret_bytes_are_refused(tmp_path: Path, key: Any, match: str) -> None:
    with pytest.raises(ps.errors.DtypeError, match=match):
        save_bundle(tmp_path / "k.zip", {}, _record(), key=key)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ writes (issue 11)
def test_a_new_bundle_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(
    tmp_path: Path,
) -> None:
    # save_bundle created files with mode 0600.
    old = os.umask(0o027)
    try:
        path = save_bundle(tmp_path / "m.zip", {}, _record())
        assert path.stat().st_mode & 0o777 == 0o640
        os.chmod(path, 0o644)
        save_bundle(path, {"w": torch.ones(2)}, _record())
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_a_killed_save_keeps_the_old_bundle_and_the_next_save_removes_its_leftover(
    bundle_path: Path,
) -> None:
    # 22 of 40 killed saves orphaned a temp file.
    import multiprocessing
    import signal

    import physscale.io.bundle as bundle_module

    before = bundle_path.read_bytes()

    def child() -> None:
        original = bundle_module.write_member

        def write_then_die(zf: Any, name: str, data: bytes, **how: Any) -> None:
            original(zf, name, data, **how)
            if name == "record.json":
                os.kill(os.getpid(), signal.SIGKILL)

        bundle_module.write_member = write_then_die  # type: ignore[assignment]
        save_bundle(bundle_path, {"w": torch.ones(1000)}, _record())

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert bundle_path.read_bytes() == before
    leftovers = [p.name for p in bundle_path.parent.iterdir() if p != bundle_path]
    assert len(leftovers) == 1
    assert leftovers[0].startswith(f".{bundle_path.name}.physscale-tmp-")
    save_bundle(bundle_path, {}, _record())
    assert [p.name for p in bundle_path.parent.iterdir()] == [bundle_path.name]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    from fuzz._harness import call_with_timeout

    fifo = tmp_path / "pipe.zip"
    os.mkfifo(fifo)
    kind, message = call_with_timeout(lambda: load_bundle(fifo), seconds=10)
    assert kind == "DataFileError", (kind, message)
    assert "is a FIFO (named pipe), not a regular file" in message


def test_a_bundle_entry_needing_a_newer_zip_version_is_a_data_file_error(
    bundle_path: Path,
) -> None:
    # zipfile raised NotImplementedError("zip file version 15.7") opening the archive.
    raw = bytearray(bundle_path.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 6 : central + 8] = (157).to_bytes(2, "little")
    bundle_path.write_bytes(bytes(raw))
    with pytest.raises(ps.errors.DataFileError, match="is not a readable zip file"):
        load_bundle(bundle_path)
