"""Feature-codec benchmark: bytes per frame and encode/decode time for every entropy coder.

Measures, per (feature family, channels C, bits, coder): mean frame bytes (header included), the header's
share of them, the ratio to plain bit-packing, and the p50 of one ``encode_features`` / ``decode_features``
call in µs. ``auto``/``max`` rows also give how often each coder was chosen. ``bz2 (ref)`` is a reference only
(not a codec option): the bytes a raw bz2 stream of the packed bits would take, header included.

Synthetic features (default) imitate a bottleneck's output: a Gaussian field smoothed by a 3x3 binomial kernel
(spatially correlated), a log-normal scale and a normal offset per channel, then

* ``relu``   - ReLU (about half zeros),
* ``gauss``  - no activation (signed, dense),
* ``sparse`` - ReLU after a shift by -1 (about 80 % zeros).

Real features: ``--features feats.npy`` with a float32 array ``[N, C, H, W]`` (e.g. dumped from the encoder).

``huffman`` (and ``auto``/``max``, which then try it too) use learned tables: for synthetic features, tables
fitted on as many *other* frames of the same family (a held-out draw); for real features, the tables that the
bundle (``--bundle``, default the shipped one) ships for mode ``w<C>b<bits>``.

    python -m bench.codec --out out/codec.json                 # full: 200 frames per configuration
    python -m bench.codec --quick --out out/codec-quick.json   # 20 frames per configuration
    python -m bench.codec --features feats.npy --out out/codec-real.json
"""

from __future__ import annotations

import argparse
import bz2
import json
import platform
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import track
from rich.table import Table

from bench.results_io import recorded_args, recorded_path
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.bundle.codec_tables import load_codec_tables
from slimsplit.codec import HuffmanTables, decode_features, encode_features, peek_header, quantize
from slimsplit.codec.bitpack import pack_bits, packed_size
from slimsplit.codec.header import header_size
from slimsplit.codec.huffman import count_frame_bytes

CODERS = ("none", "zlib", "lzma", "huffman", "auto", "max")
FAMILIES = ("relu", "gauss", "sparse")
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class BenchConfig:
    channels: tuple[int, ...] = (2, 4, 8, 16)
    bits: tuple[int, ...] = (1, 2, 4, 8)
    height: int = 8
    width: int = 8
    frames: int = 200
    families: tuple[str, ...] = FAMILIES
    features: str | None = None
    bundle: str | None = None  # tables for real features (default: the shipped bundle)
    seed: int = 0


@dataclass
class Row:
    family: str
    channels: int
    height: int
    width: int
    bits: int
    coder: str
    frames: int
    packed_bytes: int
    bytes_mean: float
    payload_bytes_mean: float
    header_share: float
    ratio_vs_none: float
    encode_us_p50: float | None
    decode_us_p50: float | None
    chosen: dict[str, float] = field(default_factory=dict)


def synthetic(family: str, n: int, c: int, h: int, w: int, rng: np.random.Generator) -> F32:
    """``n`` frames ``[n, c, h, w]`` of the given synthetic family (see the module docstring)."""
    z = rng.standard_normal((n, c, h + 2, w + 2)).astype(np.float32)
    z = z[:, :, :-2] + 2 * z[:, :, 1:-1] + z[:, :, 2:]
    z = (z[:, :, :, :-2] + 2 * z[:, :, :, 1:-1] + z[:, :, :, 2:]) / np.float32(6)
    scale = np.exp(rng.normal(0, 0.5, (n, c, 1, 1))).astype(np.float32)
    offset = rng.normal(0, 0.5, (n, c, 1, 1)).astype(np.float32)
    x = z * scale + offset
    if family == "relu":
        x = np.maximum(x, 0)
    elif family == "sparse":
        x = np.maximum(x - 1, 0)
    elif family != "gauss":
        raise SystemExit(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return x.astype(np.float32)


def load_features(path: str) -> F32:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {path}: {exc}") from None
    if arr.ndim != 4 or arr.dtype.kind != "f":
        raise SystemExit(f"{path}: expected a float array [N, C, H, W], got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _p50(ns: list[int]) -> float:
    return float(np.median(ns)) / 1e3


def measure(family: str, frames: F32, bits: int, tables: HuffmanTables | None) -> list[Row]:
    """All coder rows for one family/shape/bits over ``frames`` ``[N, C, H, W]`` (huffman only with tables)."""
    n, c, h, w = frames.shape
    packed = packed_size(c * h * w, bits)
    rows: list[Row] = []
    none_mean = float(np.mean([len(encode_features(x, bits, entropy="none")) for x in frames]))
    for coder in CODERS:
        if coder == "huffman" and tables is None:
            continue
        encode_features(frames[0], bits, entropy=coder, tables=tables)  # warm-up
        sizes: list[int] = []
        headers: list[int] = []
        enc_ns: list[int] = []
        dec_ns: list[int] = []
        chosen: Counter[str] = Counter()
        for x in frames:
            t0 = time.perf_counter_ns()
            frame = encode_features(x, bits, entropy=coder, tables=tables)
            t1 = time.perf_counter_ns()
            decode_features(frame, tables=tables)
            t2 = time.perf_counter_ns()
            header = peek_header(frame)
            sizes.append(len(frame))
            headers.append(header.header_len)
            enc_ns.append(t1 - t0)
            dec_ns.append(t2 - t1)
            chosen[header.coder] += 1
        mean, head = float(np.mean(sizes)), float(np.mean(headers))
        rows.append(
            Row(
                family, c, h, w, bits, coder, n, packed, mean, mean - head, head / mean,
                mean / none_mean, _p50(enc_ns), _p50(dec_ns), {k: v / n for k, v in sorted(chosen.items())},
            )
        )  # fmt: skip
    bz_payloads = [len(bz2.compress(pack_bits(quantize(x, bits)[0], bits), 9)) for x in frames]
    head = float(np.mean([header_size((c, h, w), p) for p in bz_payloads]))
    mean = head + float(np.mean(bz_payloads))
    rows.append(
        Row(family, c, h, w, bits, "bz2 (ref)", n, packed, mean, mean - head, head / mean,
            mean / none_mean, None, None)
    )  # fmt: skip
    return rows


def summarize(rows: list[Row]) -> list[dict[str, object]]:
    """Per (family, C, bits): which real coder gives the fewest bytes, and what auto costs."""
    out: list[dict[str, object]] = []
    keys = list(dict.fromkeys((r.family, r.channels, r.bits) for r in rows))
    for fam, c, b in keys:
        group = {r.coder: r for r in rows if (r.family, r.channels, r.bits) == (fam, c, b)}
        best = min(("none", "zlib", "lzma", "bz2 (ref)"), key=lambda k: group[k].bytes_mean)
        out.append(
            {
                "family": fam,
                "channels": c,
                "bits": b,
                "best_single_coder": best,
                "auto_bytes_mean": group["auto"].bytes_mean,
                "max_bytes_mean": group["max"].bytes_mean,
                "none_bytes_mean": group["none"].bytes_mean,
                "auto_saving": 1 - group["auto"].bytes_mean / group["none"].bytes_mean,
                "max_extra_saving_over_auto": 1 - group["max"].bytes_mean / group["auto"].bytes_mean,
            }
        )
    return out


def print_table(console: Console, rows: list[Row]) -> None:
    for fam in dict.fromkeys(r.family for r in rows):
        table = Table(title=f"feature codec — {fam} features, [C, {rows[0].height}, {rows[0].width}]")
        for col in ("C", "bits", "coder", "bytes", "vs none", "header", "enc µs p50", "dec µs p50", "chosen"):
            table.add_column(col, justify="left" if col in ("coder", "chosen") else "right")
        last = None
        for r in (r for r in rows if r.family == fam):
            if last is not None and (r.channels, r.bits) != last:
                table.add_section()
            last = (r.channels, r.bits)
            table.add_row(
                str(r.channels), str(r.bits), r.coder, f"{r.bytes_mean:.1f}", f"{r.ratio_vs_none:.3f}",
                f"{100 * r.header_share:.1f}%",
                "-" if r.encode_us_p50 is None else f"{r.encode_us_p50:.0f}",
                "-" if r.decode_us_p50 is None else f"{r.decode_us_p50:.0f}",
                " ".join(f"{k} {v:.0%}" for k, v in r.chosen.items()) if r.coder in ("auto", "max") else "",
            )  # fmt: skip
        console.print(table)


def plot(rows: list[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    families = list(dict.fromkeys(r.family for r in rows))
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4.5), squeeze=False)
    for ax, fam in zip(axes[0], families, strict=True):
        configs = list(dict.fromkeys((r.channels, r.bits) for r in rows if r.family == fam))
        for coder, marker in (("zlib", "o"), ("lzma", "^"), ("bz2 (ref)", "x"), ("auto", "s"), ("max", ".")):
            mine = (r for r in rows if r.family == fam and r.coder == coder)
            ratio = {(r.channels, r.bits): r.ratio_vs_none for r in mine}
            ax.plot(range(len(configs)), [ratio[k] for k in configs], marker=marker, label=coder, alpha=0.8)
        ax.axhline(1.0, color="grey", linewidth=1, label="none (bit-packing)")
        ax.set_xticks(range(len(configs)), [f"{c}/{b}" for c, b in configs], rotation=90)
        ax.set_xlabel("channels / bits")
        ax.set_ylabel("frame bytes relative to plain bit-packing")
        ax.set_title(f"{fam} features, [C, {rows[0].height}, {rows[0].width}], header included")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, Path | None, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--plot", type=Path, help="PNG plot path (default: --out with .png)")
    p.add_argument("--quick", action="store_true", help="20 frames per configuration instead of 200")
    p.add_argument("--frames", type=int, help="frames per configuration (overrides --quick)")
    p.add_argument("--channels", default="2,4,8,16", help="comma list (synthetic only)")
    p.add_argument("--bits", default="1,2,4,8", help="comma list of bit depths (1..16)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma list of synthetic families")
    p.add_argument("--features", help="a .npy file, float32 [N, C, H, W], of real features (first --frames)")
    p.add_argument("--bundle", help="bundle whose codec tables code --features (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    frames = a.frames if a.frames is not None else (20 if a.quick else 200)
    if frames < 1:
        p.error("--frames must be >= 1")
    cfg = BenchConfig(
        channels=tuple(int(v) for v in a.channels.split(",")),
        bits=tuple(int(v) for v in a.bits.split(",")),
        frames=frames,
        families=tuple(a.families.split(",")),
        features=a.features,
        bundle=a.bundle,
        seed=a.seed,
    )
    plot_path = a.plot if a.plot is not None else (a.out.with_suffix(".png") if a.out else None)
    return cfg, a.out, plot_path


def main(argv: list[str] | None = None) -> int:
    cfg, out, plot_path = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=132)
    rng = np.random.default_rng(cfg.seed)
    jobs: list[tuple[str, F32, int, HuffmanTables | None]] = []
    if cfg.features:
        feats = load_features(cfg.features)[: cfg.frames]
        shipped = load_codec_tables(Bundle.open(cfg.bundle or default_bundle_path()))
        name = f"file {Path(cfg.features).name}"
        jobs = [(name, feats, b, shipped.get(f"w{feats.shape[1]}b{b}")) for b in cfg.bits]
    else:
        for fam in cfg.families:
            for c in cfg.channels:
                data = synthetic(fam, cfg.frames, c, cfg.height, cfg.width, rng)
                held_out = synthetic(fam, cfg.frames, c, cfg.height, cfg.width, rng)
                jobs += [(fam, data, b, HuffmanTables.fit(count_frame_bytes(held_out, b))) for b in cfg.bits]
    rows: list[Row] = []
    for fam, data, b, tables in track(jobs, description="encoding", console=console):
        rows += measure(fam, data, b, tables)
    print_table(console, rows)
    result = {
        "benchmark": "codec",
        "command": " ".join(["python", "-m", "bench.codec", *recorded_args(sys.argv[1:] if argv is None else argv)]),
        "config": asdict(
            replace(
                cfg,
                features=cfg.features and recorded_path(cfg.features),
                bundle=cfg.bundle and recorded_path(cfg.bundle),
            )
        ),
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "results": [asdict(r) for r in rows],
        "summary": summarize(rows),
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {out}")
    if plot_path and plot(rows, plot_path):
        console.print(f"wrote {plot_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
