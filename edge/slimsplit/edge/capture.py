"""Live frame sources: a camera (``camera:N``), a video file, a network stream (``rtsp://...``, ``http://...mjpg``).

What ``--source`` accepts beyond the data sets of :mod:`slimsplit.edge.sources` (:func:`live_kind` tells them
apart; :func:`open_live` opens one):

* ``camera:N`` - camera ``N``: the Raspberry Pi Camera Module through Picamera2 when ``picamera2`` is importable
  and lists camera ``N`` (Raspberry Pi OS ships it as ``python3-picamera2``: a virtual environment sees it only
  when created with ``python3 -m venv --system-site-packages``), else ``/dev/videoN`` (V4L2, USB) through
  OpenCV's ``VideoCapture``.
* a video file (:data:`VIDEO_SUFFIXES`: any container OpenCV's FFmpeg opens) and a network stream
  (:data:`STREAM_SCHEMES`) through OpenCV. OpenCV is the ``camera`` extra (``pip install slimsplit[camera]``:
  ``opencv-python-headless``), imported only when such a source is opened.

Live semantics (:class:`LiveFrames`, what :meth:`LiveSource.take` returns):

* A reader thread reads the device, time-stamps each frame when it arrives (``time.perf_counter``: the frame's
  ``captured_at``) and keeps only the newest one; the edge always gets the newest frame.
* Rates (``fps`` of :meth:`LiveSource.take`): ``None`` = the source's own (a file plays at its recorded rate, a
  camera or stream gives each new frame); ``0`` = as fast as possible (a file hands over every frame, none
  dropped; a camera the newest whenever asked); ``> 0`` = paced down to that rate, on ticks (a tick takes the
  newest frame; the frames between ticks are the pacing, not losses).
* Stale frames: a frame the edge could not take - replaced by a newer one (own rate, ``fps=0``), or the frame of a
  tick the edge missed while busy (``fps > 0``) - rides on the next frame taken (``SourceFrame.stale``);
  :func:`stale_records` makes them ``SKIPPED`` records with the reason kind :data:`~slimsplit.records.STALE`.
* A file that ends ends the frames (:attr:`LiveSource.outcome` says so, naming it). No frame for
  :attr:`LiveOptions.stall_s` raises :class:`~slimsplit.errors.SourceError` (``kind`` ``"stalled"``; or
  ``"disappeared"`` when the device failed - camera unplugged, stream dropped - and reopening it, with
  exponential backoff from :attr:`LiveOptions.backoff_s` to :attr:`LiveOptions.backoff_max_s`, did not bring a
  frame back in that time). Every wait is bounded: OpenCV's open and read get timeouts, the consumer waits at
  most ``stall_s``; nothing hangs.

Each frame is fitted to the bundle's input by :func:`~slimsplit.edge.sources.fit_image` (centre crop to the
aspect ratio, then resize: :mod:`slimsplit.imaging`), when it is taken (dropped frames cost nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import InputSpec
from slimsplit.edge.sources import SourceFrame, StaleFrame, fit_image
from slimsplit.errors import ConfigError, SourceError
from slimsplit.records import SKIPPED, STALE, FrameRecord

Image = npt.NDArray[np.uint8]
Clock = Callable[[], float]

CAMERA_PREFIX: Final = "camera:"
VIDEO_SUFFIXES: Final = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mjpg", ".mjpeg", ".h264", ".ts")
STREAM_SCHEMES: Final = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
CAMERA_EXTRA_HINT: Final = (
    "cameras, video files and network streams need OpenCV: pip install 'slimsplit[camera]' (opencv-python-headless)"
)
DEFAULT_FILE_FPS: Final = 25.0  # a file that does not say its frame rate plays at this one
_ARRIVALS = 1024  # arrival times kept (sequence number, instant) to name stale frames; images are never kept
_POLL_S = 0.25  # how often a blocked wait looks at whether it was closed


@dataclass(frozen=True)
class LiveOptions:
    """How a live source is read. ``stall_s``: no frame for this long is a failure (the run ends with a
    :class:`SourceError`); ``open_timeout_s``/``read_timeout_s``: OpenCV's limits for opening and for one read
    (FFmpeg: files and streams); ``backoff_s``..``backoff_max_s``: the waits between attempts to reopen a device
    that failed (doubling); ``capture_size``: the (width, height) a camera is asked for (``None``: its default)."""

    stall_s: float = 5.0
    open_timeout_s: float = 5.0
    read_timeout_s: float = 2.0
    backoff_s: float = 0.25
    backoff_max_s: float = 4.0
    capture_size: tuple[int, int] | None = (640, 480)

    def __post_init__(self) -> None:
        for key in ("stall_s", "open_timeout_s", "read_timeout_s", "backoff_s", "backoff_max_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key}: expected a number of seconds > 0, got {value!r}", key=key)
        if self.backoff_max_s < self.backoff_s:
            raise ConfigError(
                f"backoff_max_s ({self.backoff_max_s:g}) must be >= backoff_s ({self.backoff_s:g})",
                key="backoff_max_s",
            )
        if self.capture_size is not None and min(self.capture_size) < 1:
            raise ConfigError(f"capture_size: expected (width, height) >= 1, got {self.capture_size!r}")


class Device(Protocol):
    """One opened capture device. ``read`` blocks for one frame (uint8 [H, W, C], RGB or gray) and returns
    ``None`` when there is none to come (end of file, a failed read); ``fps``: its own rate, 0 when unknown."""

    @property
    def fps(self) -> float: ...
    def read(self) -> Image | None: ...
    def close(self) -> None: ...


#: Opens a device; raises :class:`SourceError` (``kind="unavailable"``) when it cannot.
Opener = Callable[[], Device]


# ------------------------------------------------------------------------------------------------ what is live


def live_kind(text: str) -> str | None:
    """``"camera"``, ``"stream"`` or ``"file"`` when ``--source text`` names a live source, else ``None``."""
    if text.startswith(CAMERA_PREFIX):
        return "camera"
    scheme, sep, _ = text.partition("://")
    if sep and scheme.lower() in STREAM_SCHEMES:
        return "stream"
    if Path(text).suffix.lower() in VIDEO_SUFFIXES:
        return "file"
    return None


def camera_index(text: str) -> int:
    """The ``N`` of ``camera:N`` (:class:`SourceError` naming the source when it is not an integer >= 0)."""
    rest = text[len(CAMERA_PREFIX) :]
    if not rest.isdigit():
        raise SourceError(
            f"--source {text}: expected camera:N with N the camera's number (camera:0 = the first)",
            source=text,
            kind="unavailable",
        )
    return int(rest)


# ------------------------------------------------------------------------------------------------ devices


def _cv2(source: str) -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise SourceError(f"--source {source}: {CAMERA_EXTRA_HINT}", source=source, kind="unavailable") from exc
    return cv2


def _rgb(frame: npt.NDArray[Any]) -> Image:
    """OpenCV's B, G, R(, A) (or gray) as R, G, B (a view: fitting copies)."""
    if frame.ndim == 3 and frame.shape[2] >= 3:
        out: Image = frame[:, :, 2::-1] if frame.shape[2] == 3 else frame[:, :, [2, 1, 0]]
        return out
    return frame


class OpenCVDevice:
    """A camera index, file or stream URL read through ``cv2.VideoCapture`` with open and read timeouts."""

    def __init__(self, target: int | str, source: str, options: LiveOptions, *, camera: bool = False) -> None:
        cv2 = _cv2(source)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            round(options.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            round(options.read_timeout_s * 1000),
        ]
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            what = f"/dev/video{target}" if camera else "it"
            raise SourceError(f"{source}: OpenCV cannot open {what}", source=source, kind="unavailable")
        if camera:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
            if options.capture_size is not None:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, options.capture_size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, options.capture_size[1])
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else 0.0
        self._cap = cap

    @property
    def fps(self) -> float:
        return self._fps

    def read(self) -> Image | None:
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        return _rgb(np.asarray(frame))

    def close(self) -> None:
        self._cap.release()


class Picamera2Device:
    """The Raspberry Pi Camera Module ``index`` through Picamera2 (RGB frames of ``options.capture_size``)."""

    def __init__(self, picamera2: Any, index: int, source: str, options: LiveOptions) -> None:
        try:
            cam = picamera2(index)
            main: dict[str, Any] = {"format": "RGB888"}
            if options.capture_size is not None:
                main["size"] = tuple(options.capture_size)
            cam.configure(cam.create_video_configuration(main=main))
            cam.start()
        except Exception as exc:  # libcamera raises RuntimeError and others for a busy or missing camera
            raise SourceError(f"{source}: Picamera2 cannot start camera {index} ({exc})", source=source) from exc
        self._cam = cam

    @property
    def fps(self) -> float:
        return 0.0

    def read(self) -> Image | None:
        try:
            frame = np.asarray(self._cam.capture_array("main"))
        except Exception:  # the camera went away
            return None
        return frame[:, :, 2::-1]  # libcamera's RGB888 is B, G, R in memory

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cam.stop()
        with contextlib.suppress(Exception):
            self._cam.close()


def _picamera2() -> Any:
    """Picamera2's camera class when the module is importable (Raspberry Pi OS, system site packages), else None."""
    try:
        from picamera2 import Picamera2
    except Exception:  # ImportError, or libcamera failing to load on a machine without it
        return None
    return Picamera2


def open_camera(index: int, source: str, options: LiveOptions) -> Device:
    """Camera ``index``: Picamera2 when importable and it lists that camera, else OpenCV (``/dev/videoN``)."""
    picamera2 = _picamera2()
    if picamera2 is not None:
        try:
            cameras = list(picamera2.global_camera_info())
        except Exception:
            cameras = []
        if index < len(cameras):
            return Picamera2Device(picamera2, index, source, options)
    return OpenCVDevice(index, source, options, camera=True)


def opener_for(text: str, options: LiveOptions) -> tuple[str, Opener]:
    """The kind of the live source ``text`` and a function that opens it (:class:`SourceError` when not live)."""
    kind = live_kind(text)
    if kind == "camera":
        index = camera_index(text)
        return kind, lambda: open_camera(index, text, options)
    if kind == "file":
        path = Path(text).expanduser()
        if not path.is_file():
            raise SourceError(f"--source {text}: no such video file", source=text, kind="unavailable")
        return kind, lambda: OpenCVDevice(str(path), text, options)
    if kind == "stream":
        return kind, lambda: OpenCVDevice(text, text, options)
    raise SourceError(f"--source {text}: not a camera, video file or stream", source=text, kind="unavailable")


# ------------------------------------------------------------------------------------------------ reading


class _Reader:
    """The reader thread of one run over a live source: reads, time-stamps, keeps the newest frame (``lossless``:
    hands over every one), reopens a device that failed (not a file) with backoff."""

    def __init__(
        self,
        source: str,
        kind: str,
        opener: Opener,
        device: Device | None,
        options: LiveOptions,
        *,
        realtime_fps: float,
        lossless: bool,
        clock: Clock,
    ) -> None:
        self.source = source
        self.kind = kind
        self.options = options
        self.cond = threading.Condition()
        self.seq = -1  # the newest frame's sequence number (-1: none yet)
        self.latest: tuple[float, Image] | None = None  # its arrival instant and image
        self.taken = -1  # the newest sequence number the consumer took (lossless mode waits for it)
        self.arrivals: deque[tuple[int, float]] = deque(maxlen=_ARRIVALS)
        self.ended = False  # a file's end was reached
        self.finished = False  # the thread has returned
        self.lost_since: float | None = None  # when the device failed (None: it is fine)
        self.last_error = ""
        self.attempts = 0  # reopen attempts since the device failed
        self.reconnects = 0  # successful reopens
        self.clock = clock
        self.started_at = clock()
        self.last_arrival: float | None = None
        self._opener = opener
        self._device = device
        self._realtime_fps = realtime_fps
        self._lossless = lossless
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"slimsplit-source {source}", daemon=True)
        self._thread.start()

    def stop(self, join_s: float = 0.0) -> None:
        self._stop.set()
        with self.cond:
            self.cond.notify_all()
        if join_s > 0:
            self._thread.join(join_s)

    def _run(self) -> None:
        device = self._device
        self._device = None
        backoff = self.options.backoff_s
        first_at: float | None = None
        played = 0
        try:
            while not self._stop.is_set():
                if device is None:
                    try:
                        device = self._opener()
                    except Exception as exc:  # SourceError, or whatever a driver raises
                        with self.cond:
                            self.attempts += 1
                            self.last_error = str(exc)
                            self.lost_since = self.lost_since if self.lost_since is not None else self.clock()
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, self.options.backoff_max_s)
                        continue
                    backoff = self.options.backoff_s
                    with self.cond:
                        self.reconnects += 1
                        self.lost_since = None
                try:
                    image = device.read()
                except Exception as exc:  # a driver error is a failed read
                    image = None
                    self.last_error = f"{type(exc).__name__}: {exc}"
                if image is None:
                    if self.kind == "file":
                        with self.cond:
                            self.ended = True
                            self.cond.notify_all()
                        return
                    with self.cond:
                        if self.lost_since is None:
                            self.lost_since = self.clock()
                            self.attempts = 0
                            self.last_error = self.last_error or "a read failed"
                        self.cond.notify_all()
                    with contextlib.suppress(Exception):
                        device.close()
                    device = None
                    continue
                now = self.clock()
                if self._realtime_fps > 0:  # a file at its own rate: frame k is due at first + k / fps
                    first_at = now if first_at is None else first_at
                    due = first_at + played / self._realtime_fps
                    played += 1
                    if due > now:
                        if self._stop.wait(due - now):
                            return
                        now = self.clock()
                self._publish(image, now)
        finally:
            if device is not None:
                with contextlib.suppress(Exception):
                    device.close()
            with self.cond:
                self.finished = True
                self.cond.notify_all()

    def _publish(self, image: Image, now: float) -> None:
        with self.cond:
            if self._lossless:
                while self.taken < self.seq and not self._stop.is_set():
                    self.cond.wait(_POLL_S)
            self.seq += 1
            self.latest = (now, image)
            self.last_arrival = now
            self.last_error = ""
            self.arrivals.append((self.seq, now))
            self.cond.notify_all()


class LiveFrames(Iterator[SourceFrame], AsyncIterator[SourceFrame]):
    """The frames of one run over a live source (see the module docstring): iterate it (each ``next`` blocks, at
    most ``stall_s``), or ``async for`` it (the waits run in a worker thread, the event loop stays free). Ends
    after ``count`` frames or when a file ends; :meth:`close` stops the reader (also when it ends)."""

    def __init__(self, source: LiveSource, reader: _Reader, count: int | None, fps: float | None) -> None:
        self._source = source
        self._reader = reader
        self._count = count
        self._period = 1.0 / fps if fps else 0.0
        self._paced = bool(fps)
        self._lossless = reader.kind == "file" and fps == 0
        self._taken = 0
        self._last_seq = -1
        self._next_tick: float | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.stale = 0  # stale frames so far

    def __iter__(self) -> LiveFrames:
        return self

    def __next__(self) -> SourceFrame:
        frame = self._take()
        if frame is None:
            raise StopIteration
        return frame

    def __aiter__(self) -> LiveFrames:
        return self

    async def __anext__(self) -> SourceFrame:
        if self._closed:
            raise StopAsyncIteration
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="slimsplit-take")
        frame = await asyncio.get_running_loop().run_in_executor(self._executor, self._take)
        if frame is None:
            raise StopAsyncIteration
        return frame

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._reader.stop()

    # ---------------------------------------------------------------------------------------------- one frame

    def _take(self) -> SourceFrame | None:
        if self._closed or (self._count is not None and self._taken >= self._count):
            self.close()
            return None
        reader = self._reader
        with reader.cond:
            stale = self._pace(reader) if self._paced else []
            if not self._wait_for_frame(reader):
                self._source.outcome = self._ended_note(reader)
                self.close()
                return None
            assert reader.latest is not None
            seq = reader.seq
            arrived, image = reader.latest
            if not self._paced and not self._lossless:
                stale = [StaleFrame(s, t, self._name(s)) for s, t in reader.arrivals if self._last_seq < s < seq]
            self._last_seq = reader.taken = seq
            reader.cond.notify_all()
        self._taken += 1
        self.stale += len(stale)
        fitted = fit_image(image, self._source.input_spec, f"{self._source.name} frame {seq}")
        return SourceFrame(seq, fitted, None, self._name(seq), captured_at=arrived, stale=tuple(stale))

    def _name(self, seq: int) -> str:
        return f"{self._source.name}#{seq}"

    def _pace(self, reader: _Reader) -> list[StaleFrame]:
        """Wait for the next tick (holding ``reader.cond``, which the wait releases); the frames of the ticks
        missed since the last one, each the newest frame that had arrived by its tick."""
        clock = reader.clock
        now = clock()
        if self._next_tick is None:
            self._next_tick = now
        while now < self._next_tick and not self._closed:
            reader.cond.wait(min(self._next_tick - now, _POLL_S))
            now = clock()
        missed = max(0, math.floor((now - self._next_tick) / self._period))
        ticks = [self._next_tick + i * self._period for i in range(missed)]
        self._next_tick += (missed + 1) * self._period
        stale: list[StaleFrame] = []
        last = self._last_seq
        for tick in ticks:
            newest = [(s, t) for s, t in reader.arrivals if s > last and t <= tick]
            if newest:
                s, t = newest[-1]
                stale.append(StaleFrame(s, t, self._name(s)))
                last = s
        return stale

    def _wait_for_frame(self, reader: _Reader) -> bool:
        """Wait (holding ``reader.cond``) for a frame newer than the last one taken: True when there is one, False
        when the file ended; :class:`SourceError` when none came for ``stall_s``."""
        options = reader.options
        while reader.seq <= self._last_seq:
            if reader.ended or self._closed:
                return False
            since = reader.last_arrival if reader.last_arrival is not None else reader.started_at
            deadline = since + options.stall_s + (options.open_timeout_s if reader.last_arrival is None else 0.0)
            remaining = deadline - reader.clock()
            if remaining <= 0:
                error = self._failure(reader)
                self.close()
                raise error
            reader.cond.wait(min(remaining, _POLL_S))
        return True

    def _failure(self, reader: _Reader) -> SourceError:
        name, stall = self._source.name, reader.options.stall_s
        if reader.lost_since is not None or reader.finished:
            return SourceError(
                f"{name} disappeared ({reader.last_error or 'its reader stopped'}); no frame for {stall:g} s and "
                f"{reader.attempts} attempt(s) to reopen it (backoff up to {reader.options.backoff_max_s:g} s) "
                "failed",
                source=name,
                kind="disappeared",
                stall_s=stall,
            )
        return SourceError(
            f"{name} stalled: no frame for {stall:g} s (the device is open but sends nothing)",
            source=name,
            kind="stalled",
            stall_s=stall,
        )

    def _ended_note(self, reader: _Reader) -> str:
        if reader.ended:
            return f"{self._source.name} ended after {reader.seq + 1} frames"
        return f"{self._source.name} closed after {self._taken} frames"


class LiveSource:
    """A camera, video file or stream, opened (so that one that cannot be is a usage error before anything
    connects). :meth:`take` starts a run over it; ``outcome``: how the last run's frames ended (a file's end)."""

    labelled = False

    def __init__(
        self,
        name: str,
        kind: str,
        opener: Opener,
        input_spec: InputSpec,
        options: LiveOptions | None = None,
        *,
        class_names: tuple[str, ...] = (),
        clock: Clock = time.perf_counter,
    ) -> None:
        self.name = name
        self.kind = kind
        self.input_spec = input_spec
        self.options = options or LiveOptions()
        self.class_names = class_names
        self.outcome: str | None = None
        self._opener = opener
        self._clock = clock
        self._device: Device | None = opener()
        self.fps = self._device.fps
        notes: list[str] = []
        if kind == "file" and not self.fps:
            notes.append(f"{name} does not say its frame rate: it plays at {DEFAULT_FILE_FPS:g} frames/s")
        self.notes = tuple(notes)
        rate = f"{self.fps:g} frames/s" if self.fps else "rate unknown"
        self.description = f"{kind} {name} ({rate}, fitted to {input_spec.height}x{input_spec.width})"
        self._runs: list[LiveFrames] = []

    def take(self, n: int | None = None, *, cycle: bool = False, fps: float | None = None) -> LiveFrames:
        """The next ``n`` frames (``None``: until the source ends or fails) at rate ``fps`` (see the module
        docstring). ``cycle`` is accepted for the data sets' signature: a live source does not repeat."""
        del cycle
        if fps is not None and not (math.isfinite(fps) and fps >= 0):
            raise ConfigError(f"fps must be a finite number >= 0, got {fps!r}", key="fps")
        device, self._device = self._device, None
        own = self.fps or DEFAULT_FILE_FPS
        reader = _Reader(
            self.name,
            self.kind,
            self._opener,
            device,
            self.options,
            realtime_fps=own if self.kind == "file" and fps != 0 else 0.0,
            lossless=self.kind == "file" and fps == 0,
            clock=self._clock,
        )
        frames = LiveFrames(self, reader, n, fps)
        self._runs.append(frames)
        return frames

    def close(self) -> None:
        """Stop every run's reader and release a device not yet used."""
        for run in self._runs:
            run.close()
        if self._device is not None:
            self._device.close()
            self._device = None

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()


def open_live(
    text: str,
    input_spec: InputSpec,
    options: LiveOptions | None = None,
    class_names: tuple[str, ...] = (),
) -> LiveSource:
    """Open the camera, video file or stream ``text`` (:class:`SourceError` naming it when it cannot be)."""
    opts = options or LiveOptions()
    kind, opener = opener_for(text, opts)
    return LiveSource(text, kind, opener, input_spec, opts, class_names=class_names)


def stale_records(frame: SourceFrame, *, deadline_ms: float | None, origin: float) -> list[FrameRecord]:
    """The ``SKIPPED`` records (reason kind :data:`~slimsplit.records.STALE`) of the frames that rode on ``frame``
    (``SourceFrame.stale``); ``origin``: the ``time.perf_counter`` instant records' ``t_s`` count from."""
    out = []
    for s in frame.stale:
        reason = f"{STALE}: frame {s.index} was replaced by a newer one before the edge could take it"
        out.append(
            FrameRecord(
                0,
                s.index,
                "",
                SKIPPED,
                reason,
                None,
                reason=reason,
                deadline_ms=deadline_ms,
                t_s=s.captured_at - origin,
                source=s.name,
            )
        )
    return out


__all__ = [
    "CAMERA_EXTRA_HINT",
    "CAMERA_PREFIX",
    "DEFAULT_FILE_FPS",
    "STREAM_SCHEMES",
    "VIDEO_SUFFIXES",
    "Device",
    "LiveFrames",
    "LiveOptions",
    "LiveSource",
    "OpenCVDevice",
    "Opener",
    "Picamera2Device",
    "camera_index",
    "live_kind",
    "open_camera",
    "open_live",
    "opener_for",
    "stale_records",
]
