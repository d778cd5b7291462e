"""Where frames come from: a folder of images, an ``.npz`` of frames, or the shipped sample; and, through
:func:`open_frames`, the live sources of :mod:`slimsplit.edge.capture` (a camera, a video file, a stream).

Every source yields :class:`SourceFrame` objects holding a uint8 RGB image ``[H, W, C]`` that already matches
the bundle's input shape (``manifest.input``): grayscale is replicated to RGB, other sizes are cut to the input's
aspect ratio around the centre and then resized (:mod:`slimsplit.imaging`: the policy training used, pure
numpy), anything that cannot be made to fit raises :class:`~slimsplit.errors.DatasetError` naming the file and
the problem. Folders need Pillow (``pip install slimsplit[edge-images]``); ``.npz`` files and the sample need
nothing; live sources need OpenCV (``pip install slimsplit[camera]``).
"""

from __future__ import annotations

import zipfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import InputSpec, default_samples_path
from slimsplit.errors import DatasetError
from slimsplit.imaging import fit_size, resize_bilinear

if TYPE_CHECKING:
    from slimsplit.edge.capture import LiveOptions, LiveSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SAMPLE = "sample"

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class StaleFrame:
    """A live source's frame the edge could not take (a newer one replaced it): its place in the source, the
    ``time.perf_counter`` instant it arrived, its name."""

    index: int
    captured_at: float
    name: str = ""


@dataclass(frozen=True)
class SourceFrame:
    """One frame: its position in the source, the image (uint8 [H, W, C]), the label if known, a name. A live
    source also gives ``captured_at`` (the ``time.perf_counter`` instant the frame arrived; ``None``: a data set's
    frame is captured when it is taken) and ``stale`` (the frames it replaced, see :mod:`slimsplit.edge.capture`)."""

    index: int
    image: Image
    label: int | None = None
    name: str = ""
    captured_at: float | None = None
    stale: tuple[StaleFrame, ...] = ()


@dataclass(frozen=True)
class FrameSource:
    """A finite, re-iterable sequence of frames with a description for the display."""

    description: str
    frames: tuple[SourceFrame, ...]
    class_names: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[SourceFrame]:
        return iter(self.frames)

    @property
    def labelled(self) -> bool:
        return any(f.label is not None for f in self.frames)

    def take(self, n: int | None, *, cycle: bool = False) -> Iterator[SourceFrame]:
        """The first ``n`` frames (all when ``None``); with ``cycle`` the source repeats to reach ``n``."""
        if n is None:
            yield from self.frames
            return
        if not self.frames:
            return
        count = 0
        while count < n:
            for f in self.frames:
                if count >= n:
                    return
                yield f if f.index == count else SourceFrame(count, f.image, f.label, f.name)
                count += 1
            if not cycle:
                return


# ------------------------------------------------------------------------------------------ image fitting


def fit_image(image: npt.NDArray[Any], spec: InputSpec, where: str) -> Image:
    """One image as uint8 [spec.height, spec.width, spec.channels] (channels converted, then
    :func:`~slimsplit.imaging.fit_size`: centre crop to the aspect ratio, resize); DatasetError naming ``where``
    if it cannot be."""
    arr = np.asarray(image)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DatasetError(f"{where}: pixels must be numbers, got dtype {arr.dtype}", where=where)
    if np.issubdtype(arr.dtype, np.floating):
        raise DatasetError(
            f"{where}: pixels must be uint8 in 0..255, got {arr.dtype} (scale and cast with "
            f"np.clip(x * 255, 0, 255).astype(np.uint8) first)",
            where=where,
        )
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
        raise DatasetError(f"{where}: pixel values must be in 0..255, got {int(arr.min())}..{int(arr.max())}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise DatasetError(f"{where}: expected an image [H, W, C], got shape {tuple(arr.shape)}", where=where)
    if arr.shape[0] == spec.channels and arr.shape[-1] not in (1, 3, 4) and arr.shape[-1] != spec.channels:
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    channels = arr.shape[-1]
    if channels == 4 and spec.channels == 3:
        arr = arr[:, :, :3]  # drop alpha
    elif channels == 1 and spec.channels == 3:
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 3 and spec.channels == 1:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        arr = np.rint(arr.astype(np.float32) @ weights)[:, :, None]
    elif channels != spec.channels:
        raise DatasetError(
            f"{where}: image has {channels} channels, the model takes {spec.channels} ({spec.color})",
            where=where,
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DatasetError(f"{where}: empty image of shape {tuple(arr.shape)}", where=where)
    return fit_size(arr.astype(np.uint8, copy=False), spec.height, spec.width)


# ------------------------------------------------------------------------------------------------- npz


def _npz_images_layout(images: npt.NDArray[Any], spec: InputSpec, where: str) -> npt.NDArray[Any]:
    """Bring a batch to [N, H, W, C] (accepts NHWC, NCHW and grayscale NHW)."""
    if images.ndim == 3:
        return images[:, :, :, None]
    if images.ndim != 4:
        raise DatasetError(
            f"{where}: 'images' must be [N, H, W, C] (or [N, C, H, W] / [N, H, W]), got shape {images.shape}",
            where=where,
        )
    if images.shape[-1] in (1, 3, 4):
        return images
    if images.shape[1] in (1, 3, 4):
        return np.moveaxis(images, 1, -1)
    raise DatasetError(f"{where}: cannot tell the channel axis of 'images' with shape {images.shape}", where=where)


def from_arrays(
    images: npt.NDArray[Any],
    labels: npt.NDArray[Any] | None,
    spec: InputSpec,
    *,
    description: str,
    class_names: Sequence[str] = (),
    where: str = "<arrays>",
) -> FrameSource:
    """A source over in-memory arrays (images [N, H, W, C] uint8, labels [N] integers or None)."""
    batch = _npz_images_layout(np.asarray(images), spec, where)
    if batch.shape[0] == 0:
        raise DatasetError(f"{where}: 'images' holds no frames", where=where)
    lab: list[int | None]
    if labels is None:
        lab = [None] * batch.shape[0]
    else:
        arr = np.asarray(labels).reshape(-1)
        if arr.shape[0] != batch.shape[0]:
            raise DatasetError(
                f"{where}: {arr.shape[0]} labels for {batch.shape[0]} images; they must match", where=where
            )
        if not np.issubdtype(arr.dtype, np.integer):
            raise DatasetError(f"{where}: 'labels' must be integers, got dtype {arr.dtype}", where=where)
        lab = [int(v) for v in arr]
    frames = tuple(
        SourceFrame(i, fit_image(batch[i], spec, f"{where}[{i}]"), lab[i], f"{Path(where).name}[{i}]")
        for i in range(batch.shape[0])
    )
    return FrameSource(description=description, frames=frames, class_names=tuple(class_names))


def load_npz(path: Path, spec: InputSpec) -> FrameSource:
    """Frames from an ``.npz`` with ``images`` (and optionally ``labels`` and ``classes``)."""
    if not path.is_file():
        raise DatasetError(f"frames file {path} does not exist", path=str(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise DatasetError(
                    f"{path}: no 'images' array (found: {', '.join(data.files) or 'nothing'})", path=str(path)
                )
            images = data["images"]
            labels = data["labels"] if "labels" in data.files else None
            classes = [str(c) for c in data["classes"]] if "classes" in data.files else []
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})", path=str(path)) from exc
    return from_arrays(
        images,
        labels,
        spec,
        description=f"{path.name} ({images.shape[0]} frames)",
        class_names=classes,
        where=str(path),
    )


def load_sample(spec: InputSpec, path: Path | None = None) -> FrameSource:
    """The shipped sample images (``slimsplit/assets/samples.npz``)."""
    sample = path or default_samples_path()
    if not sample.is_file():
        raise DatasetError(
            f"the shipped sample {sample} is missing; reinstall slimsplit or pass --source FOLDER|FILE.npz",
            path=str(sample),
        )
    source = load_npz(sample, spec)
    return FrameSource(
        description=f"shipped sample ({len(source)} frames)",
        frames=source.frames,
        class_names=source.class_names,
    )


# ---------------------------------------------------------------------------------------------- folders


def _pillow() -> Any:
    try:
        from PIL import Image as PILImage
    except ImportError as exc:
        raise DatasetError(
            "reading image folders needs Pillow: pip install slimsplit[edge-images] "
            "(or pass an .npz of frames, or --source sample)"
        ) from exc
    return PILImage


def _read_image(path: Path, spec: InputSpec) -> Image:
    pil = _pillow()
    try:
        with pil.open(path) as img:
            img.load()
            mode = "L" if spec.channels == 1 else "RGB"
            arr = np.asarray(img.convert(mode))
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow raises these for corrupt/unknown files
        raise DatasetError(f"{path}: not a readable image ({exc})", path=str(path)) from exc
    return fit_image(arr, spec, str(path))


def _label_map(folders: Sequence[str], class_names: Sequence[str]) -> tuple[dict[str, int] | None, str]:
    """Labels for ImageFolder-style subfolders: by the model's class names, or by integer folder names."""
    lowered = {c.lower(): i for i, c in enumerate(class_names)}
    if class_names and all(f.lower() in lowered for f in folders):
        return {f: lowered[f.lower()] for f in folders}, ""
    if all(f.isdigit() and int(f) < max(len(class_names), 1) for f in folders):
        return {f: int(f) for f in folders}, ""
    return None, (
        "subfolder names do not match the model's classes, so labels are unknown and accuracy is not "
        f"reported (folders: {', '.join(folders[:5])}{'...' if len(folders) > 5 else ''})"
    )


def load_folder(path: Path, spec: InputSpec, class_names: Sequence[str] = ()) -> FrameSource:
    """Images in ``path`` (sorted), or in ``path/<class>/*`` with labels from the subfolder names."""
    if not path.is_dir():
        raise DatasetError(f"image folder {path} does not exist", path=str(path))

    def images_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    subfolders = sorted(p for p in path.iterdir() if p.is_dir() and images_in(p))
    entries: list[tuple[Path, str | None]] = [(p, None) for p in images_in(path)]
    notes: list[str] = []
    mapping: dict[str, int] | None = None
    if subfolders:
        mapping, note = _label_map([p.name for p in subfolders], class_names)
        if note:
            notes.append(note)
        entries += [(img, sub.name) for sub in subfolders for img in images_in(sub)]
    if not entries:
        raise DatasetError(
            f"image folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}), directly or one level down",
            path=str(path),
        )
    frames = tuple(
        SourceFrame(
            i,
            _read_image(img, spec),
            mapping[folder] if mapping is not None and folder is not None else None,
            str(img.relative_to(path)),
        )
        for i, (img, folder) in enumerate(entries)
    )
    return FrameSource(
        description=f"{path} ({len(frames)} images)",
        frames=frames,
        class_names=tuple(class_names),
        notes=tuple(notes),
    )


def open_source(spec_text: str, input_spec: InputSpec, class_names: Sequence[str] = ()) -> FrameSource:
    """Open ``sample``, a ``.npz`` file or an image folder (the data sets ``--source`` accepts; live sources:
    :func:`open_frames`)."""
    from slimsplit.edge.capture import live_kind

    if live_kind(spec_text) is not None:
        raise DatasetError(
            f"--source {spec_text}: a camera, video file or stream is a live source, not a data set here",
            path=spec_text,
        )
    if spec_text == SAMPLE:
        source = load_sample(input_spec)
    else:
        path = Path(spec_text).expanduser()
        if path.is_dir():
            return load_folder(path, input_spec, class_names)
        if path.suffix.lower() == ".npz":
            source = load_npz(path, input_spec)
        elif path.exists():
            raise DatasetError(f"--source {spec_text}: expected a folder of images, an .npz file or 'sample'")
        else:
            raise DatasetError(f"--source {spec_text}: no such file or folder (or use 'sample')", path=str(path))
    return _align_classes(source, tuple(class_names))


def open_frames(
    spec_text: str,
    input_spec: InputSpec,
    class_names: Sequence[str] = (),
    options: LiveOptions | None = None,
) -> FrameSource | LiveSource:
    """Everything ``--source`` accepts: a data set (:func:`open_source`) or a live source (``camera:N``, a video
    file, ``rtsp://``/``http://`` streams: :func:`slimsplit.edge.capture.open_live`, read with ``options``)."""
    from slimsplit.edge.capture import live_kind, open_live  # threads and OpenCV only for live sources

    if live_kind(spec_text) is not None:
        return open_live(spec_text, input_spec, options, tuple(class_names))
    return open_source(spec_text, input_spec, class_names)


async def aiter_frames(frames: Iterable[SourceFrame] | AsyncIterable[SourceFrame]) -> AsyncIterator[SourceFrame]:
    """``frames`` as an async iterator: a live source's frames are awaited (their waits run off the event loop),
    a data set's are iterated as they are."""
    if isinstance(frames, AsyncIterable):
        async for frame in frames:
            yield frame
    else:
        for frame in frames:
            yield frame


def _align_classes(source: FrameSource, class_names: tuple[str, ...]) -> FrameSource:
    """Express the source's labels in the model's class order (by name) when both name their classes."""
    if not class_names or source.class_names == class_names:
        return FrameSource(source.description, source.frames, class_names or source.class_names, source.notes)
    if not source.class_names:
        return FrameSource(source.description, source.frames, class_names, source.notes)
    index = {c.lower(): i for i, c in enumerate(class_names)}
    if all(c.lower() in index for c in source.class_names):
        remap = [index[c.lower()] for c in source.class_names]
        frames = tuple(
            SourceFrame(f.index, f.image, None if f.label is None else remap[f.label], f.name)
            if f.label is None or 0 <= f.label < len(remap)
            else SourceFrame(f.index, f.image, None, f.name)
            for f in source.frames
        )
        return FrameSource(source.description, frames, class_names, source.notes)
    note = "the source's class names differ from the model's, so labels are dropped and accuracy is not reported"
    frames = tuple(SourceFrame(f.index, f.image, None, f.name) for f in source.frames)
    return FrameSource(source.description, frames, class_names, (*source.notes, note))


__all__ = [
    "IMAGE_SUFFIXES",
    "SAMPLE",
    "FrameSource",
    "SourceFrame",
    "StaleFrame",
    "aiter_frames",
    "fit_image",
    "from_arrays",
    "load_folder",
    "load_npz",
    "load_sample",
    "open_frames",
    "open_source",
    "resize_bilinear",
]
