"""``physscale normalize``: detector counts to training data
([`physscale.io.normalize_files`][physscale.io.normalize_files]).

The command turns flags into the call, draws a bar per pass, and prints the
record (or, with ``--json``, the record and what was excluded). The library
writes the output atomically; nothing is written unless every file was read.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from tqdm import tqdm

from physscale.cli.messages import fmt
from physscale.io.normalize import NormalizedFiles, NormalizeProgress, normalize_files

__all__ = ["add_parser", "run"]


def _invalid_value(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None  # --invalid-value none: no marker values at all
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def add_parser(sub: Any, common: Any) -> None:
    """The ``normalize`` subcommand's flags; ``common`` adds -q/--debug."""
    p = sub.add_parser(
        "normalize",
        help="detector counts (npy, npz, HDF5, NeXus master) to normalized training data",
        description="Read raw detector counts, exclude invalid pixels (the pixel mask: "
        "NeXus/Eiger and ptychodus masks are nonzero/True = bad pixel; marker values such "
        "as 2**32-1 or 65535; counts above the detector's saturation), and write "
        "PtychoPINN-normalized amplitudes under 'diff3d', the valid-pixel mask under "
        "'mask' (True = valid pixel) and the measured nphotons in the file's metadata, "
        "in bounded memory, atomically.",
    )
    p.add_argument("paths", nargs="+", metavar="SCAN", help="count files, read in this order")
    p.add_argument("--out", required=True, metavar="FILE", help="the .npz to write")
    p.add_argument("--key", metavar="KEY", help="the counts' array (default: known layouts)")
    p.add_argument(
        "--pixel-mask",
        metavar="FILE[:DATASET]",
        help="a pixel mask file (default: the master's NeXus pixel_mask or ptychodus' "
        "bad_pixels, when present)",
    )
    p.add_argument(
        "--mask-polarity",
        choices=("bad", "valid"),
        help="what a nonzero entry of --pixel-mask means: bad (NeXus, ptychodus) or valid "
        "(physscale's own masks)",
    )
    p.add_argument(
        "--no-pixel-mask", action="store_true", help="ignore any pixel mask in the files"
    )
    p.add_argument(
        "--invalid-value",
        type=_invalid_value,
        action="append",
        metavar="V",
        help="a marker value that is never photons (repeatable; default: the integer "
        "dtype's maximum; 'none' for no markers)",
    )
    p.add_argument(
        "--max-valid",
        type=float,
        metavar="N",
        help="counts above N are invalid (default: the master's saturation_value or "
        "countrate_correction_count_cutoff)",
    )
    p.add_argument(
        "--follow-links",
        action="store_true",
        help="follow a NeXus master's external links and virtual datasets (only to files "
        "in the master's own folder)",
    )
    p.add_argument(
        "--carry",
        action="append",
        default=[],
        metavar="NAME",
        help="copy this array (positions, a probe) from the first file that has it (repeatable)",
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="of diff3d")
    p.add_argument("--json", action="store_true", help="print the record and exclusions as JSON")
    common(p, top=False)


class _Bars:
    """One tqdm bar per pass, on stderr; none with -q or off a terminal."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.bar: Any = None
        self.pass_ = 0

    def __call__(self, p: NormalizeProgress) -> None:
        if not self.enabled:
            return
        if p.pass_ != self.pass_:
            self.close()
            self.pass_ = p.pass_
            what = "counting" if p.pass_ == 1 else "writing"
            self.bar = tqdm(
                total=p.n_frames, unit="frame", desc=f"pass {p.pass_}/2 {what}", file=self.stream
            )
        self.bar.update(p.frames_done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``physscale normalize`` with parsed ``args``; the exit status (errors raise)."""
    invalid = None
    if args.invalid_value is not None:
        invalid = tuple(v for v in args.invalid_value if v is not None)
    pixel_mask: Any = False if args.no_pixel_mask else args.pixel_mask
    bars = _Bars(stderr, enabled=not args.quiet and _isatty(stderr))
    try:
        result = normalize_files(
            args.paths,
            args.out,
            key=args.key,
            pixel_mask=pixel_mask,
            mask_polarity=args.mask_polarity,
            invalid_values=invalid,
            max_valid=args.max_valid,
            follow_links=args.follow_links,
            carry=args.carry,
            dtype=args.dtype,
            progress=bars,
        )
    finally:
        bars.close()
    if args.json:
        payload = {
            "record": json.loads(result.record.model_dump_json()),
            "out": str(result.out),
            "invalid_values": result.invalid_values,
            "max_valid": result.max_valid,
            "invalid_pixels": result.invalid_pixels,
            "mask_source": result.mask_source,
            "masked_pixels": result.masked_pixels,
            "carried": result.carried,
        }
        stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        stdout.write(_summary(result) + "\n")
    return 0


def _summary(result: NormalizedFiles) -> str:
    r = result.record
    markers = ", ".join(fmt(v) for v in result.invalid_values) or "none"
    lines = [
        f"{result.out}: {r.n_patterns} patterns of {r.pattern_shape}, normalized amplitudes "
        f"under 'diff3d', the valid-pixel mask under 'mask'",
        f"  intensity_scale  {fmt(r.intensity_scale)}  (counts are (s * x)**2)",
        f"  nphotons         {fmt(r.nphotons)}  measured: mean valid counts per pattern",
        f"  pixel mask       {result.mask_source or 'none'}; {result.masked_pixels} pixels "
        f"per pattern excluded",
        f"  invalid values   {markers}"
        + (f"; counts above {fmt(result.max_valid)}" if result.max_valid is not None else "")
        + f"; {result.invalid_pixels} more pixel values excluded as markers",
    ]
    if result.carried:
        lines.append(f"  carried          {', '.join(result.carried)}")
    return "\n".join(lines)
