"""Mode tables for the controllers: from a bundle manifest, or a published table (no model needed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from slimsplit.bundle import Manifest
from slimsplit.control.base import ModeOption
from slimsplit.errors import ConfigError


def modes_from_manifest(manifest: Manifest, server_overhead_ms: float = 0.0) -> tuple[ModeOption, ...]:
    """One :class:`ModeOption` per manifest mode: ``accuracy``, ``payload_bytes_mean``, ``encoder_ms_p50`` and
    ``tail_ms_p50`` (+ ``server_overhead_ms`` for decode/queueing) as the expected server time. Every one of those
    fields must be measured (not null): a controller cannot plan with unknown figures."""
    out = []
    for m in manifest.modes:
        missing = [
            f
            for f, v in (
                ("accuracy", m.accuracy),
                ("payload_bytes_mean", m.payload_bytes_mean),
                ("encoder_ms_p50", m.encoder_ms_p50),
            )
            if v is None
        ]
        if missing:
            raise ConfigError(
                f"bundle {manifest.name!r} mode {m.name!r} lacks measured {', '.join(missing)}; "
                "re-export the bundle with measurements before using an adaptive controller",
                mode=m.name,
            )
        assert m.accuracy is not None and m.payload_bytes_mean is not None and m.encoder_ms_p50 is not None
        out.append(
            ModeOption(
                name=m.name,
                width=m.width,
                bits=m.bits,
                accuracy=m.accuracy,
                payload_bytes=m.payload_bytes_mean,
                encoder_ms=m.encoder_ms_p50,
                server_ms=(m.tail_ms_p50 or 0.0) + server_overhead_ms,
            )
        )
    return tuple(out)


# Slimmable-ensemble operating points on a Raspberry Pi 4 (members x bits), as published:
#   mode "<members><bits>": encoder ms, payload bytes, COCO mAP
_PUBLISHED_RPI4 = {
    (1, 1): (66.0, 14.5),
    (1, 4): (66.0, 34.3),
    (2, 4): (137.0, 36.1),
    (3, 4): (198.0, 36.4),
    (4, 4): (263.0, 36.8),
}
_RPI4_ENCODER_MS = {1: 66.0, 2: 137.0, 3: 198.0, 4: 263.0}
RPI4_PAYLOAD_BYTES_PER_BIT = 6912


def rpi4_ensemble_modes(server_ms: float = 0.0) -> tuple[ModeOption, ...]:
    """The published slimmable-ensemble operating points on a Raspberry Pi 4, filled to the full 4 x 4 grid.

    Published: ``11`` 66 ms 6.9 KB 14.5 mAP; ``14`` 66 ms 27.6 KB 34.3; ``24`` 137 ms 27.6 KB 36.1;
    ``34`` 198 ms 27.6 KB 36.4; ``44`` 263 ms 27.6 KB 36.8. Filled in (not published):

    * payload = 6,912 B x bits (so 6.9 / 13.8 / 20.7 / 27.6 KB for 1-4 bits), for every member count;
    * encoder latency depends on the member count only (66 / 137 / 198 / 263 ms);
    * mAP is *interpolated*: for one member linearly in bits between the published 1-bit (14.5) and 4-bit (34.3)
      points; for ``m`` members the same bit-depth penalty is applied to the published 4-bit value of ``m``
      members, i.e. ``mAP(m, b) = mAP(m, 4) - (mAP(1, 4) - mAP(1, b))``.

    Accuracy is mAP / 100 (a fraction). Names are ``"<members><bits>"`` (``width`` = members). The server's tail
    time is not published: ``server_ms`` (default 0) is added to every mode.
    """
    lo, hi = _PUBLISHED_RPI4[(1, 1)][1], _PUBLISHED_RPI4[(1, 4)][1]
    out = []
    for members in (1, 2, 3, 4):
        top = _PUBLISHED_RPI4[(members, 4)][1]
        for bits in (1, 2, 3, 4):
            one_member = lo + (hi - lo) * (bits - 1) / 3.0
            mean_ap = top - (hi - one_member)
            out.append(
                ModeOption(
                    name=f"{members}{bits}",
                    width=members,
                    bits=bits,
                    accuracy=round(mean_ap, 4) / 100.0,
                    payload_bytes=float(RPI4_PAYLOAD_BYTES_PER_BIT * bits),
                    encoder_ms=_RPI4_ENCODER_MS[members],
                    server_ms=server_ms,
                )
            )
    for (members, bits), (enc, mean_ap) in _PUBLISHED_RPI4.items():  # the grid reproduces every published point
        m = next(o for o in out if o.name == f"{members}{bits}")
        assert m.encoder_ms == enc and abs(m.accuracy * 100 - mean_ap) < 1e-9, m
    return tuple(out)


def pareto_modes(modes: Iterable[ModeOption]) -> tuple[ModeOption, ...]:
    """Modes not dominated by another (one at least as accurate, no more bytes, encoder or server time, and
    strictly better in one of them), most accurate first."""
    ms = list(modes)
    keep = []
    for a in ms:
        dominated = False
        for b in ms:
            if b is a:
                continue
            no_worse = (
                b.accuracy >= a.accuracy
                and b.payload_bytes <= a.payload_bytes
                and b.encoder_ms <= a.encoder_ms
                and b.server_ms <= a.server_ms
            )
            better = (
                b.accuracy > a.accuracy
                or b.payload_bytes < a.payload_bytes
                or b.encoder_ms < a.encoder_ms
                or b.server_ms < a.server_ms
            )
            if no_worse and better:
                dominated = True
                break
        if not dominated:
            keep.append(a)
    keep.sort(key=lambda m: (-m.accuracy, m.payload_bytes, m.encoder_ms))
    return tuple(keep)


def check_modes(modes: Sequence[ModeOption]) -> None:
    """Raise :class:`ConfigError` for an empty table, duplicate names or impossible figures."""
    if not modes:
        raise ConfigError("the mode table is empty")
    names = [m.name for m in modes]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate mode names in {names}")
    for m in modes:
        if m.payload_bytes < 0 or m.encoder_ms < 0 or m.server_ms < 0 or not 0 <= m.accuracy <= 1:
            raise ConfigError(f"mode {m.name!r} has impossible figures: {m}")


__all__ = ["RPI4_PAYLOAD_BYTES_PER_BIT", "check_modes", "modes_from_manifest", "pareto_modes", "rpi4_ensemble_modes"]
