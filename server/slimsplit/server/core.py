"""The transport-neutral inference core: validate -> decode -> batch -> tail -> prediction.

The gRPC servicer is a thin adapter over :class:`InferenceCore`; tests, benchmarks and the load tester call
the core in-process and get the same behaviour, errors included (every failure is a
:class:`~slimsplit.errors.SlimsplitError` whose ``grpc_status`` the adapter reports).

Per frame, in order: protocol version (UnsupportedVersion), model and version (UnknownModel), mode
(UnknownMode), the codec header against the mode (bits, shape [width, H, W]) and the payload length
(InvalidFrame/CodecError), decode, finite values (InvalidFrame), then the batcher (Overloaded when its queue
is full), the tail, and top-k.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle, Manifest, ModeSpec
from slimsplit.bundle.codec_tables import load_codec_tables
from slimsplit.codec import DecodeLimits, HuffmanTables, decode_features, peek_header
from slimsplit.errors import (
    BundleError,
    DeadlineExceeded,
    InvalidFrame,
    SlimsplitError,
    Unavailable,
    UnknownMode,
    UnknownModel,
    UnsupportedVersion,
)
from slimsplit.protocol import PROTOCOL_VERSION
from slimsplit.records import ServerTiming
from slimsplit.server.backends.base import Backend, TailRunner
from slimsplit.server.batcher import BatchResult, ModeBatcher, TailLoad
from slimsplit.server.config import BatchingConfig, ServerConfig
from slimsplit.server.metrics import ServerMetrics
from slimsplit.server.repository import discover_all, newest

log = logging.getLogger("slimsplit.server")

_UNKNOWN_LABEL = "_unknown"
_SMALL_TOP_K = 64


@dataclass(frozen=True)
class InferRequest:
    """One frame, independent of the transport (mirrors ``slimsplit.v1.FeatureFrame``)."""

    model: str
    mode: str
    features: bytes
    model_version: str = ""  # empty = the newest loaded version
    frame_id: int = 0
    top_k: int = 0  # 0 = the server's default
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class InferResult:
    """The prediction for one frame (mirrors ``slimsplit.v1.Prediction``); ``logits`` is the full row."""

    frame_id: int
    model: str
    model_version: str
    mode: str
    classes: tuple[int, ...]
    scores: tuple[float, ...]
    labels: tuple[str, ...]
    timing: ServerTiming
    logits: npt.NDArray[np.float32] = field(compare=False, repr=False)


@dataclass(frozen=True)
class LoadedModel:
    """A bundle whose tails are loaded on a backend."""

    bundle: Bundle
    runner: TailRunner
    limits: DecodeLimits  # the widest header this model accepts (before the per-mode check)
    mode_limits: Mapping[str, DecodeLimits]  # per mode: exactly its shape and bit depth
    codec_tables: Mapping[str, HuffmanTables]  # per mode: the feature codec's learned huffman code (may be empty)

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @classmethod
    def load(cls, bundle: Bundle, backend: Backend) -> LoadedModel:
        m = bundle.manifest
        # Any bit depth passes this first check, so a frame of the wrong depth gets a message naming the mode.
        limits = DecodeLimits.for_shape((m.feature.max_channels, m.feature.height, m.feature.width))
        mode_limits = {s.name: DecodeLimits.for_shape(m.feature.shape(s.width), (s.bits,)) for s in m.modes}
        tables = load_codec_tables(bundle)
        return cls(
            bundle=bundle, runner=backend.load(bundle), limits=limits, mode_limits=mode_limits, codec_tables=tables
        )


def top_k(logits: npt.NDArray[np.float32], k: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The ``k`` best classes (ties: lower index first) and their softmax probabilities."""
    if logits.size <= _SMALL_TOP_K:  # plain Python beats numpy's per-call overhead on a few classes
        values = logits.tolist()
        peak = max(values)
        e = [math.exp(v - peak) for v in values]
        total = math.fsum(e)
        order = sorted(range(len(e)), key=lambda i: -e[i])[:k]  # sorted() is stable
        return tuple(order), tuple(e[i] / total for i in order)
    z = logits.astype(np.float64)
    ex = np.exp(z - z.max())
    p = ex / ex.sum()
    best = np.argsort(-p, kind="stable")[:k]
    return tuple(int(i) for i in best), tuple(float(p[i]) for i in best)


class InferenceCore:
    """Serves frames for a set of loaded models on one backend. Use it from one asyncio event loop.

    Build it with :meth:`from_config` (loads bundles; blocking) or from :class:`LoadedModel` objects. Call
    :meth:`infer` for each frame, :meth:`drain` to stop accepting frames and finish the queued ones, and
    :meth:`aclose` to release the tails.
    """

    def __init__(
        self,
        models: Sequence[LoadedModel],
        *,
        backend_name: str,
        backend_info: dict[str, str] | None = None,
        batching: BatchingConfig | None = None,
        default_top_k: int = 5,
        metrics: ServerMetrics | None = None,
    ) -> None:
        if not models:
            raise BundleError("the inference core needs at least one loaded model")
        self.backend_name = backend_name
        self.backend_info = dict(backend_info or {"backend": backend_name})
        self.batching = batching or BatchingConfig()
        self.default_top_k = default_top_k
        self.metrics = metrics
        self._models: dict[str, dict[str, LoadedModel]] = {}
        for model in models:
            m = model.manifest
            self._models.setdefault(m.name, {})[m.version] = model
        self._latest = {name: newest(list(versions)) for name, versions in self._models.items()}
        self._executor = ThreadPoolExecutor(self.batching.executor_threads, thread_name_prefix="slimsplit-tail")
        self._batchers: dict[tuple[str, str, str], ModeBatcher] = {}
        self._tail_load = TailLoad()  # how busy the tails keep this core (decides inline vs executor)
        self._accepting = True
        self._in_flight = 0
        self._serve_s: dict[tuple[str, str, str], float] = {}  # recent mean queue + tail seconds, per mode

    @classmethod
    def from_config(
        cls, config: ServerConfig, *, backend: Backend | None = None, metrics: ServerMetrics | None = None
    ) -> InferenceCore:
        """Load every bundle under ``config.model_paths()`` on ``backend`` (default: ``config.backend``)."""
        if backend is None:
            from slimsplit.server.backends.registry import create_backend

            backend = create_backend(config.backend)
        bundles = discover_all(config.model_paths())
        loaded: list[LoadedModel] = []
        try:
            for bundle in bundles:
                loaded.append(LoadedModel.load(bundle, backend))
                m = bundle.manifest
                log.info(
                    "loaded %s %s (%d modes) from %s on %s",
                    m.name,
                    m.version,
                    len(m.modes),
                    bundle.root,
                    backend.name,
                )
        except BaseException:
            for model in loaded:
                model.runner.close()
            raise
        return cls(
            loaded,
            backend_name=backend.name,
            backend_info=backend.describe(),
            batching=config.batching,
            default_top_k=config.default_top_k,
            metrics=metrics,
        )

    # ------------------------------------------------------------------------------------------- lookups
    @property
    def in_flight(self) -> int:
        """Frames inside :meth:`infer` right now."""
        return self._in_flight

    def models(self) -> tuple[LoadedModel, ...]:
        return tuple(m for versions in self._models.values() for m in versions.values())

    def model(self, name: str, version: str = "") -> LoadedModel:
        versions = self._models.get(name)
        if versions is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise UnknownModel(f"no model named {name!r} is loaded (loaded: {known})", model=name)
        if not version:
            version = self._latest[name]
        loaded = versions.get(version)
        if loaded is None:
            raise UnknownModel(
                f"model {name!r} has no version {version!r} (loaded versions: {', '.join(sorted(versions))})",
                model=name,
                version=version,
            )
        return loaded

    def describe(self, model: str = "") -> tuple[Manifest, ...]:
        """Manifests of the loaded models (one model's versions when ``model`` is given)."""
        if model:
            self.model(model)  # raises UnknownModel
            return tuple(v.manifest for v in self._models[model].values())
        return tuple(m.manifest for m in self.models())

    # ------------------------------------------------------------------------------------------- validation
    def resolve(self, request: InferRequest) -> tuple[LoadedModel, ModeSpec]:
        """The loaded model and mode a frame names (protocol version, model, version, mode; raises
        SlimsplitError)."""
        if request.protocol_version != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"protocol_version {request.protocol_version} is not supported; this server speaks {PROTOCOL_VERSION}",
                field="protocol_version",
                value=request.protocol_version,
            )
        loaded = self.model(request.model, request.model_version)
        m = loaded.manifest
        try:
            spec = m.mode(request.mode)
        except UnknownMode:
            raise UnknownMode(
                f"model {m.name!r} version {m.version!r} has no mode {request.mode!r} "
                f"(modes: {', '.join(m.mode_names)})",
                model=m.name,
                mode=request.mode,
            ) from None
        return loaded, spec

    def serve_estimate_s(self, loaded: LoadedModel, spec: ModeSpec) -> float:
        """Seconds a frame of this mode takes from decoded to answered: the recent mean (queue and tail) of its
        frames, else the manifest's tail time, else 2 ms."""
        m = loaded.manifest
        seen = self._serve_s.get((m.name, m.version, spec.name))
        if seen is not None:
            return seen
        return (spec.tail_ms_p50 or 2.0) / 1000.0

    def validate(self, request: InferRequest) -> tuple[LoadedModel, ModeSpec, npt.NDArray[np.float32]]:
        """Check a frame against the manifest and decode it (synchronous; raises SlimsplitError)."""
        loaded, spec = self.resolve(request)
        m = loaded.manifest
        header = peek_header(request.features, loaded.limits)
        expected = m.feature.shape(spec.width)
        if header.bits != spec.bits:
            raise InvalidFrame(
                f"the frame header says {header.bits} bits but mode {spec.name} uses {spec.bits}",
                field="bits",
                value=header.bits,
                expected=spec.bits,
            )
        if header.shape != expected:
            raise InvalidFrame(
                f"the frame header says shape {list(header.shape)} but mode {spec.name} sends "
                f"{list(expected)} (channels, height, width)",
                field="shape",
                value=header.shape,
                expected=expected,
            )
        decoded = decode_features(
            request.features, loaded.mode_limits[spec.name], tables=loaded.codec_tables.get(spec.name)
        )
        x = decoded.array
        if not np.isfinite(x).all():
            raise InvalidFrame("the decoded features contain NaN or infinite values", field="features")
        return loaded, spec, x

    def _batcher(self, loaded: LoadedModel, spec: ModeSpec) -> ModeBatcher:
        m = loaded.manifest
        key = (m.name, m.version, spec.name)
        batcher = self._batchers.get(key)
        if batcher is None:
            hook = None
            if self.metrics is not None:
                hook = partial(self.metrics.batch_ran, m.name, spec.name)
            batcher = ModeBatcher(
                f"{m.name}:{m.version}:{spec.name}",
                partial(loaded.runner.run, spec.name),
                self.batching,
                self._executor,
                hook,
                inline_safe=loaded.runner.inline_safe,
                load=self._tail_load,
            )
            self._batchers[key] = batcher
        return batcher

    # ------------------------------------------------------------------------------------------- serving
    def start(
        self, request: InferRequest, *, timeout: float | None = None, received: float | None = None
    ) -> asyncio.Future[InferResult]:
        """Begin serving one frame, eagerly: validation, decoding and, when its mode is idle and its tail cheap
        (see :meth:`ModeBatcher.try_inline`), the tail itself run before this returns, and the future comes back
        already done; otherwise the frame waits in the batcher and the future resolves later. Errors (every one a
        :class:`SlimsplitError` for a bad frame) arrive through the future. ``timeout``: seconds the caller will
        wait (frames past it are not run and fail with DeadlineExceeded); ``received``: ``time.perf_counter()``
        when the transport got the frame. Must be called on the event loop."""
        t0 = time.perf_counter() if received is None else received
        return self._start(request, partial(self._begin, request, t0, timeout))

    def start_decoded(
        self,
        request: InferRequest,
        x: npt.NDArray[np.float32],
        *,
        payload_bytes: int,
        timeout: float | None = None,
        received: float | None = None,
    ) -> asyncio.Future[InferResult]:
        """As :meth:`start`, for a frame whose features the transport decoded itself (``x``, ``[width, H, W]``
        float32; ``request.features`` is not read): checked against its mode's shape and for finite values, then
        batched and run like any frame. ``payload_bytes``: what it took on the wire (for the metrics)."""
        t0 = time.perf_counter() if received is None else received

        def begin() -> InferResult | Coroutine[Any, Any, InferResult]:
            if not self._accepting:
                raise Unavailable("the server is shutting down; retry on another replica or later")
            loaded, spec = self.resolve(request)
            expected = loaded.manifest.feature.shape(spec.width)
            if tuple(x.shape) != expected:
                raise InvalidFrame(
                    f"the features have shape {list(x.shape)} but mode {spec.name} sends {list(expected)}",
                    field="shape",
                    value=tuple(x.shape),
                    expected=expected,
                )
            if not np.isfinite(x).all():
                raise InvalidFrame("the decoded features contain NaN or infinite values", field="features")
            return self._serve(request, loaded, spec, x, (t0, timeout), payload_bytes)

        return self._start(request, begin)

    def _start(
        self, request: InferRequest, begin: Callable[[], InferResult | Coroutine[Any, Any, InferResult]]
    ) -> asyncio.Future[InferResult]:
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        fut: asyncio.Future[InferResult]
        try:
            begun = begin()
        except Exception as exc:
            fut = loop.create_future()
            fut.set_exception(exc)
        else:
            if not isinstance(begun, InferResult):
                task = loop.create_task(begun)
                task.add_done_callback(partial(self._finished, request))
                return task
            fut = loop.create_future()
            fut.set_result(begun)
        self._finished(request, fut)  # settled already: account for it now, not on the next loop turn
        return fut

    async def infer(
        self, request: InferRequest, *, timeout: float | None = None, received: float | None = None
    ) -> InferResult:
        """Serve one frame (see :meth:`start`); raises the frame's :class:`SlimsplitError`."""
        return await self.start(request, timeout=timeout, received=received)

    def _finished(self, request: InferRequest, fut: asyncio.Future[InferResult]) -> None:
        self._in_flight -= 1
        if self.metrics is not None:
            self.metrics.in_flight.dec()
        if fut.cancelled():
            self._count_failure(request, "CANCELLED")
            return
        exc = fut.exception()  # also marks the exception as retrieved
        if exc is None:
            return
        self._count_failure(request, exc.grpc_status if isinstance(exc, SlimsplitError) else "INTERNAL")

    def _begin(
        self, request: InferRequest, t0: float, timeout: float | None
    ) -> InferResult | Coroutine[Any, Any, InferResult]:
        """The synchronous part of a frame: a finished result (inline tail) or the coroutine that awaits it."""
        if not self._accepting:
            raise Unavailable("the server is shutting down; retry on another replica or later")
        loaded, spec, x = self.validate(request)
        return self._serve(request, loaded, spec, x, (t0, timeout), len(request.features))

    def _serve(
        self,
        request: InferRequest,
        loaded: LoadedModel,
        spec: ModeSpec,
        x: npt.NDArray[np.float32],
        when: tuple[float, float | None],
        payload: int,
    ) -> InferResult | Coroutine[Any, Any, InferResult]:
        t0, timeout = when
        t_decoded = time.perf_counter()
        deadline = None if timeout is None else t0 + timeout
        if deadline is not None and t_decoded >= deadline:
            raise DeadlineExceeded("the frame's deadline passed before it could be queued")
        batcher = self._batcher(loaded, spec)
        inline = batcher.try_inline(x)
        if inline is not None:
            return self._result(request, loaded, spec, inline, (t0, t_decoded), payload)
        fut = batcher.submit(x, deadline)
        return self._await_batch(request, loaded, spec, fut, (t0, t_decoded, deadline), payload)

    async def _await_batch(
        self,
        request: InferRequest,
        loaded: LoadedModel,
        spec: ModeSpec,
        fut: asyncio.Future[BatchResult],
        times: tuple[float, float, float | None],
        payload: int,
    ) -> InferResult:
        t0, t_decoded, deadline = times
        if deadline is None:
            res = await fut
        else:
            try:
                async with asyncio.timeout(deadline - time.perf_counter()):
                    res = await fut
            except TimeoutError:
                raise DeadlineExceeded(f"the frame missed its deadline of {(deadline - t0) * 1e3:.1f} ms") from None
        return self._result(request, loaded, spec, res, (t0, t_decoded), payload)

    def _result(
        self,
        request: InferRequest,
        loaded: LoadedModel,
        spec: ModeSpec,
        res: BatchResult,
        times: tuple[float, float],
        payload: int,
    ) -> InferResult:
        t0, t_decoded = times
        m = loaded.manifest
        key = (m.name, m.version, spec.name)
        serve_s = res.queue_s + res.tail_s
        seen = self._serve_s.get(key)
        self._serve_s[key] = serve_s if seen is None else 0.9 * seen + 0.1 * serve_s
        k = min(request.top_k or self.default_top_k, len(m.classes))
        classes, scores = top_k(res.logits, k)
        t_end = time.perf_counter()
        timing = ServerTiming(
            queue_ms=res.queue_s * 1e3,
            decode_ms=(t_decoded - t0) * 1e3,
            tail_ms=res.tail_s * 1e3,
            total_ms=(t_end - t0) * 1e3,
            device_cycles=res.device_cycles or 0,
            device_ms=res.device_ms or 0.0,
            backend=self.backend_name,
            batch_size=res.batch_size,
        )
        if self.metrics is not None:
            self.metrics.frame_ok(
                m.name,
                spec.name,
                total_s=t_end - t0,
                queue_s=res.queue_s,
                tail_s=res.tail_s,
                payload=payload,
            )
        return InferResult(
            frame_id=request.frame_id,
            model=m.name,
            model_version=m.version,
            mode=spec.name,
            classes=classes,
            scores=scores,
            labels=tuple(m.classes[i] for i in classes),
            timing=timing,
            logits=res.logits,
        )

    def _count_failure(self, request: InferRequest, status: str) -> None:
        if self.metrics is None:
            return
        # Label values come from the client: fold names that are not loaded so the label set stays bounded.
        versions = self._models.get(request.model)
        model = request.model if versions is not None else _UNKNOWN_LABEL
        modes: Iterable[str] = ()
        if versions is not None:
            modes = {name for v in versions.values() for name in v.manifest.mode_names}
        mode = request.mode if request.mode in modes else _UNKNOWN_LABEL
        self.metrics.frame_failed(model, mode, status)

    # ------------------------------------------------------------------------------------------- lifecycle
    def stop_accepting(self) -> None:
        """New frames are refused with Unavailable from now on; frames already queued are still served."""
        self._accepting = False

    async def drain(self) -> None:
        """Stop accepting and wait until every queued frame has been answered."""
        self.stop_accepting()
        for batcher in list(self._batchers.values()):
            await batcher.drain()

    async def aclose(self) -> None:
        """Stop the batchers (queued frames get Unavailable), close the tails and the executor."""
        self.stop_accepting()
        for batcher in list(self._batchers.values()):
            await batcher.aclose()
        self._batchers.clear()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, partial(self._executor.shutdown, wait=True, cancel_futures=True))
        for model in self.models():
            with contextlib.suppress(Exception):
                model.runner.close()
