"""Live sources (:mod:`slimsplit.edge.capture`) and the fitting policy (:mod:`slimsplit.imaging`).

Video files are written by the test itself (OpenCV's writer, MJPG in AVI); the network stream is an HTTP MJPEG
stream (``multipart/x-mixed-replace``) served on loopback by the test. The camera path (``camera:N``) runs
through the same code with a device stub where this machine has no ``/dev/video*``, and with the real device
where it has one.
"""

from __future__ import annotations

import asyncio
import glob
import http.server
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from slimsplit import errors
from slimsplit.bundle import InputSpec
from slimsplit.edge import capture
from slimsplit.edge.capture import LiveOptions, LiveSource, live_kind, open_live, stale_records
from slimsplit.edge.sources import SourceFrame, aiter_frames, load_folder, open_frames, open_source
from slimsplit.imaging import crop_box, fit_size, resize_bilinear
from slimsplit.records import STALE, summarize

cv2 = pytest.importorskip("cv2", reason="the camera extra (opencv-python-headless) is not installed")

SPEC = InputSpec(height=8, width=8)
FAST = LiveOptions(stall_s=1.0, open_timeout_s=1.0, read_timeout_s=0.5, backoff_s=0.05, backoff_max_s=0.2)
HAVE_VIDEO_DEVICE = bool(glob.glob("/dev/video*"))


# ------------------------------------------------------------------------------------------------ fitting


def test_crop_box_keeps_the_centred_window_of_the_input_aspect_ratio() -> None:
    assert crop_box(480, 640, 64, 64) == (0, 80, 480, 480)  # 4:3 camera, square input: cut the sides
    assert crop_box(100, 50, 64, 64) == (25, 0, 50, 50)  # portrait: cut top and bottom
    assert crop_box(5, 7, 2, 3) == (0, 0, 4, 7)  # 7 * 2 <= 5 * 3: full width, floor(7 * 2 / 3) = 4 rows
    assert crop_box(64, 64, 64, 64) == (0, 0, 64, 64)


def test_fit_crops_then_resizes_as_computed_by_hand() -> None:
    # 4 x 8: the centred 4 x 4 window is columns 2..5 (values 10, 20, 30, 40); the columns outside are cut.
    row = np.array([255, 255, 10, 20, 30, 40, 255, 255], dtype=np.uint8)
    image = np.repeat(np.tile(row, (4, 1))[:, :, None], 3, axis=2)
    # 4 -> 2 with the widened triangle filter: output 0 centred at 1.0 reads inputs 0..2 with weights 3/7, 3/7,
    # 1/7 -> (30 + 60 + 30) / 7 = 17.1; output 1 centred at 3.0 reads 1..3 with 1/7, 3/7, 3/7 -> 230 / 7 = 32.9
    out = fit_size(image, 2, 2)
    expected = np.repeat(np.array([[17, 33], [17, 33]], dtype=np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(out, expected)


def test_resize_is_pillows_bilinear_filter() -> None:
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for h, w, oh, ow in [(480, 480, 64, 64), (30, 17, 30, 64), (40, 90, 13, 90), (28, 28, 64, 64), (97, 51, 33, 20)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(pil.fromarray(img).resize((ow, oh), pil.Resampling.BILINEAR)).astype(int)
        diff = np.abs(resize_bilinear(img, oh, ow).astype(int) - ref)
        assert int(diff.max()) <= 1, (h, w, oh, ow)
        if h == oh or w == ow:
            assert int(diff.max()) == 0  # one pass: bit for bit


def test_the_folder_source_fits_with_the_same_code(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    img = np.random.default_rng(1).integers(0, 256, (40, 80, 3), dtype=np.uint8)
    pil.fromarray(img).save(tmp_path / "a.png")
    source = load_folder(tmp_path, SPEC)
    np.testing.assert_array_equal(source.frames[0].image, fit_size(img, 8, 8))


# ------------------------------------------------------------------------------------------------ kinds


def test_live_kinds_and_named_errors(tmp_path: Path) -> None:
    assert live_kind("camera:0") == "camera"
    assert live_kind("rtsp://cam.local/stream") == "stream"
    assert live_kind("http://10.0.0.2:8080/video.mjpg") == "stream"
    assert live_kind("clip.MP4") == "file"
    assert live_kind("frames.npz") is None and live_kind("sample") is None
    with pytest.raises(errors.SourceError, match="camera:N"):
        open_live("camera:front", SPEC)
    with pytest.raises(errors.SourceError, match="no such video file"):
        open_live(str(tmp_path / "missing.avi"), SPEC)
    with pytest.raises(errors.DatasetError, match="live source"):
        open_source("camera:0", SPEC)


def test_a_missing_opencv_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clip.avi"
    path.write_bytes(b"not a video")
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(errors.SourceError, match=r"slimsplit\[camera\]"):
        open_live(str(path), SPEC)


# ------------------------------------------------------------------------------------------------ video files


def write_video(path: Path, frames: int, fps: float, size: tuple[int, int] = (64, 48)) -> None:
    """An MJPG AVI whose frame ``i`` is uniformly ``10 * i`` grey (so a frame says which it is)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 10 * i, dtype=np.uint8))
    writer.release()


def level(frame: SourceFrame) -> int:
    return round(float(frame.image.mean()) / 10)


def test_a_video_file_as_fast_as_possible_gives_every_frame_then_ends(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path, 25, 20.0)
    source = open_live(str(path), SPEC, FAST)
    assert source.kind == "file" and source.fps == 20.0
    start = time.perf_counter()
    frames = list(source.take(fps=0))
    assert time.perf_counter() - start < 0.8  # not at 20 frames/s (that would take 1.25 s)
    assert [f.index for f in frames] == list(range(25))
    assert [level(f) for f in frames] == list(range(25))
    assert all(f.image.shape == (8, 8, 3) and not f.stale for f in frames)
    assert source.outcome == f"{path} ended after 25 frames"


def test_a_video_file_plays_at_its_own_rate_and_counts_what_the_edge_missed(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path, 20, 50.0)
    source = open_live(str(path), SPEC, FAST)
    start = time.perf_counter()
    taken = []
    for frame in source.take():
        taken.append(frame)
        time.sleep(0.045)  # a slow edge: about every other frame is replaced before it is taken
    assert time.perf_counter() - start >= 0.35  # 20 frames at 50 frames/s
    stale = [s for f in taken for s in f.stale]
    assert sorted([f.index for f in taken] + [s.index for s in stale]) == list(range(20))  # each counted once
    assert len(stale) >= 5
    arrivals = [f.captured_at for f in taken]
    assert all(a is not None for a in arrivals) and arrivals == sorted(arrivals)  # type: ignore[type-var]
    records = [r for f in taken for r in stale_records(f, deadline_ms=100.0, origin=start)]
    assert summarize(records, 1.0).skipped == {STALE: len(stale)}
    assert all(0 <= r.t_s < 1.0 and r.reason.startswith("stale: frame ") for r in records)


# ------------------------------------------------------------------------------------------------ streams


class MjpegServer:
    """An HTTP MJPEG stream on loopback: each connection gets ``per_connection`` frames at ``fps``, then closes."""

    def __init__(self, per_connection: int, fps: float = 50.0) -> None:
        jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 120, dtype=np.uint8))[1].tobytes()
        self.connections = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for _ in range(per_connection):
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                        self.wfile.write(head + jpeg + b"\r\n")
                        self.wfile.flush()
                        time.sleep(1 / fps)
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mjpeg() -> Iterator[MjpegServer]:
    server = MjpegServer(per_connection=12)
    yield server
    server.stop()


def test_a_dropped_http_stream_reconnects_with_backoff(mjpeg: MjpegServer) -> None:
    source = open_frames(mjpeg.url, SPEC, options=FAST)
    assert isinstance(source, LiveSource) and source.kind == "stream"
    frames = list(source.take(30))
    assert len(frames) == 30 and all(f.image.shape == (8, 8, 3) for f in frames)
    assert mjpeg.connections >= 3  # 12 frames a connection: it was dropped and reopened at least twice
    assert [f.index for f in frames] == sorted(f.index for f in frames)


def test_a_stream_that_disappears_is_reported_by_name(mjpeg: MjpegServer) -> None:
    source = open_live(mjpeg.url, SPEC, FAST)
    frames = source.take()
    assert next(frames).image.shape == (8, 8, 3)
    mjpeg.stop()  # the server goes away: reconnecting fails
    start = time.perf_counter()
    with pytest.raises(errors.SourceError, match="disappeared") as info:
        for _ in frames:
            pass
    assert time.perf_counter() - start < FAST.stall_s + 2.0  # bounded: never hangs
    assert info.value.context["kind"] == "disappeared" and info.value.context["source"] == mjpeg.url
    assert mjpeg.url in str(info.value)


# ------------------------------------------------------------------------------------------------ a device stub


class StubDevice:
    """A fake capture device: ``fps`` frames/s of ``shape``; after ``frames`` reads it fails (``mode="fail"``: the
    camera unplugged) or blocks without failing (``mode="stall"``)."""

    def __init__(
        self, fps: float = 100.0, frames: int | None = None, mode: str = "fail", shape: tuple[int, ...] = (480, 640, 3)
    ) -> None:
        self._shape = shape
        self._period = 1 / fps
        self._left = frames
        self._mode = mode
        self._next = time.perf_counter()
        self._closed = threading.Event()
        self.count = 0

    @property
    def fps(self) -> float:
        return 1 / self._period

    def read(self) -> np.ndarray | None:
        if self._left is not None and self.count >= self._left:
            if self._mode == "stall":
                self._closed.wait(3.0)
            return None
        delay = self._next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + self._period, time.perf_counter() - self._period)
        self.count += 1
        return np.full(self._shape, self.count % 256, dtype=np.uint8)

    def close(self) -> None:
        self._closed.set()


def stub_source(*devices: StubDevice | Exception, options: LiveOptions = FAST) -> LiveSource:
    """A camera source whose opener hands out ``devices`` in turn (an exception is raised instead)."""
    queue = list(devices)

    def opener() -> StubDevice:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return LiveSource("camera:9", "camera", opener, SPEC, options)


def test_a_stalled_device_is_reported_after_stall_s() -> None:
    source = stub_source(StubDevice(frames=3, mode="stall"))
    frames = source.take()
    got = 0
    start = time.perf_counter()
    with pytest.raises(errors.SourceError, match=r"camera:9 stalled: no frame for 1 s") as info:
        for _ in frames:
            got += 1
    assert 1 <= got <= 3 and info.value.context["kind"] == "stalled"
    assert time.perf_counter() - start < FAST.stall_s + 1.0


def test_an_unplugged_camera_reconnects_and_a_gone_one_is_reported() -> None:
    gone = errors.SourceError("camera:9: OpenCV cannot open /dev/video9", kind="unavailable")
    source = stub_source(StubDevice(frames=5), gone, StubDevice(frames=5), gone)
    frames = source.take()
    seen = []
    with pytest.raises(errors.SourceError, match=r"camera:9 disappeared \(camera:9: OpenCV cannot open"):
        for frame in frames:
            seen.append(frame.index)
    assert len(seen) >= 2 and seen == sorted(seen)
    assert frames._reader.reconnects == 1  # replugged once, then gone for good


def test_pacing_down_takes_a_frame_a_tick_and_counts_missed_ticks_as_stale() -> None:
    source = stub_source(StubDevice(fps=100.0, shape=(16, 16, 3)))
    fast = list(source.take(6, fps=20.0))
    gaps = np.diff([f.captured_at for f in fast])
    assert float(np.median(gaps)) > 0.03  # one a tick (50 ms), not every camera frame (10 ms)
    # the ~4 camera frames between ticks are the pacing, not losses (only a tick missed on a loaded machine is)
    assert 2 * sum(len(f.stale) for f in fast) < fast[-1].index - fast[0].index - 5
    slow = source.take(5, fps=20.0)
    missed = 0
    for frame in slow:
        missed += len(frame.stale)
        time.sleep(0.12)  # busy for 2.4 ticks each time: the next tick is missed
    assert missed >= 4 and slow.stale == missed  # at least one tick missed in each of the 4 gaps


@pytest.mark.skipif(HAVE_VIDEO_DEVICE, reason="this machine has /dev/video*: the real camera test runs instead")
def test_the_camera_path_with_a_device_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No /dev/video* here: ``camera:0`` runs through open_frames -> open_camera with a stub device."""
    opened: list[int] = []

    def stub_camera(index: int, source: str, options: LiveOptions) -> StubDevice:
        opened.append(index)
        return StubDevice(fps=60.0)

    monkeypatch.setattr(capture, "open_camera", stub_camera)
    source = open_frames("camera:0", SPEC, ("a", "b"), options=FAST)
    assert isinstance(source, LiveSource) and source.kind == "camera" and opened == [0]
    assert source.class_names == ("a", "b") and "camera camera:0" in source.description

    async def run() -> tuple[list[SourceFrame], int]:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                await asyncio.sleep(0.002)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        frames = [f async for f in aiter_frames(source.take(12))]
        done = True
        await task
        return frames, ticks

    frames, ticks = asyncio.run(run())
    assert len(frames) == 12 and all(f.image.shape == (8, 8, 3) for f in frames)
    assert ticks >= 10  # waiting for frames (~0.2 s) never blocked the event loop


@pytest.mark.skipif(not HAVE_VIDEO_DEVICE, reason="no /dev/video* here: test_the_camera_path_with_a_device_stub")
def test_the_real_camera() -> None:
    index = int(sorted(glob.glob("/dev/video*"))[0].removeprefix("/dev/video"))
    try:
        source = open_live(f"camera:{index}", SPEC, LiveOptions(stall_s=5.0))
    except errors.SourceError as exc:
        pytest.skip(f"/dev/video{index} exists but cannot be opened here: {exc}")
    frames = list(source.take(3))
    assert len(frames) == 3 and all(f.image.shape == (8, 8, 3) and f.captured_at is not None for f in frames)
