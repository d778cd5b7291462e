"""What the edge accepts from a server: a reply is untrusted input, as a frame is to the server.

A reply that breaks a rule here is no answer: its frame fails with :func:`invalid_reply` (status
:data:`INVALID_REPLY`, counted among the run's errors like any other failure), so a bad reply never crashes a run,
never reaches the records or the ``--json-out`` file, and never steers the controller (a failed frame's timing is
not observed). The rules:

* a :class:`~slimsplit.v1.slimsplit_pb2.Prediction` (:func:`check_prediction`, in the gRPC transports): at least one
  class and at most ``top_k`` (or :data:`MAX_CLASSES_PER_REPLY` when the server picks), each id below
  :data:`MAX_CLASS_ID` and none twice; one score per class, each a finite probability in [0, 1]; no label or none
  missing, each at most :data:`MAX_LABEL_CHARS` characters with no control character; its server timing finite, >= 0
  and at most :data:`MAX_SERVER_MS`, its total no longer than the round trip it is part of (it is subtracted from
  the round trip to measure the link); its other strings bounded;
* against the run (:func:`check_for_run`, in the pipeline): class ids within the manifest's classes, labels equal to
  the manifest's names, the model and mode those of the frame sent;
* the size of a frame's reply is bounded before it is parsed: the channel refuses a larger one
  (``maxResponseMessageBytes`` of ``Infer`` and ``InferStream``, :func:`reply_bytes_bound`), so a reply of megabytes
  costs nothing but the call (``RESOURCE_EXHAUSTED``);
* a ``FrameError`` whose status is ``OK`` is an invalid reply (:mod:`slimsplit.edge.status`), and a reply for a frame
  not in flight is counted (:class:`~slimsplit.edge.transport.InFlight`), never taken as an answer;
* every server string the edge prints or records (error messages, statuses, names) goes through :func:`printable`:
  control characters (terminal escape sequences among them) are shown escaped, never raw.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from slimsplit.errors import SlimsplitError
from slimsplit.protocol import MAX_ERROR_MESSAGE_CHARS
from slimsplit.records import ServerTiming
from slimsplit.v1 import slimsplit_pb2 as pb

INVALID_REPLY: Final = "INVALID_REPLY"
"""The status a frame is recorded with when the server's reply to it broke a rule (see the module docstring)."""

MAX_LABEL_CHARS: Final = 256
"""The longest class name a reply may carry (the bundle's own limit on its strings)."""
MAX_CLASSES_PER_REPLY: Final = 1000
"""The most classes a reply may carry when the frame asked for the server's default (the server's own cap)."""
MAX_CLASS_ID: Final = 65_536
"""Class ids are below this (the bundle's limit on its number of classes)."""
MAX_SERVER_MS: Final = 1e6
"""The longest server time a reply may claim (1000 s; a frame's deadline is far shorter)."""
MAX_NAME_CHARS: Final = 256
"""The longest model, mode, version or backend name a reply may carry."""
SCORE_TOLERANCE: Final = 1e-3
"""How far a score may stray outside [0, 1] (float32 rounding of a softmax)."""
SERVER_TIME_TOLERANCE_MS: Final = 1.0
"""How much longer than the round trip the server's time may be (timer granularity); 1 % more is allowed on top."""
MIN_REPLY_BYTES: Final = 64 * 1024
"""The default bound on one reply's encoded size (a top-5 reply with the longest labels is under 2 KiB)."""
_REPLY_BYTES_PER_CLASS: Final = 4 * MAX_LABEL_CHARS + 32  # a label's UTF-8 bytes at most, id, score, tags

_TIMING_MS: Final = ("queue_ms", "decode_ms", "tail_ms", "total_ms", "device_ms")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    """``text`` safe to print and record: control characters (escape sequences, newlines, bidirectional overrides)
    shown escaped (``\\x1b``), and at most ``limit`` characters (the last one an ellipsis when it was cut)."""
    if len(text) > limit:
        text = text[:limit]
        cut = True
    else:
        cut = False
    text = _CONTROL.sub(_escape, text)
    if cut or len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def invalid_reply(message: str, **context: object) -> SlimsplitError:
    """The error a frame fails with when the server's reply to it broke a rule (status :data:`INVALID_REPLY`)."""
    return SlimsplitError(printable(message), status=INVALID_REPLY, **context)


def reply_bytes_bound(top_k: int, floor: int = MIN_REPLY_BYTES) -> int:
    """The largest reply to a frame that asks for ``top_k`` classes (0: the server's default, at most
    :data:`MAX_CLASSES_PER_REPLY`) the channel accepts: ``floor``, or more when ``top_k`` classes with the longest
    labels need more."""
    k = top_k or MAX_CLASSES_PER_REPLY
    return max(floor, 1024 + k * _REPLY_BYTES_PER_CLASS)


def _short(value: object) -> str:
    return printable(repr(value), 60)


def _timing_error(timing: pb.ServerTiming, frame_id: int) -> SlimsplitError | None:
    for name in _TIMING_MS:
        value = getattr(timing, name)
        if not 0.0 <= value <= MAX_SERVER_MS:  # NaN fails too
            return invalid_reply(
                f"the server's reply has ServerTiming.{name} = {_short(value)} "
                f"(expected a finite number in [0, {MAX_SERVER_MS:g}] ms)",
                frame_id=frame_id,
                field=f"timing.{name}",
            )
    if len(timing.backend) > MAX_NAME_CHARS:
        return invalid_reply(
            f"the server's reply names a backend of {len(timing.backend)} characters (at most {MAX_NAME_CHARS})",
            frame_id=frame_id,
            field="timing.backend",
        )
    return None


def check_timing(timing: pb.ServerTiming, frame_id: int = 0) -> ServerTiming:
    """The server timing of a reply, when every time is finite, >= 0 and at most :data:`MAX_SERVER_MS`."""
    error = _timing_error(timing, frame_id)
    if error is not None:
        raise error
    return ServerTiming.from_pb(timing)


def check_prediction(prediction: pb.Prediction, top_k: int = 0, rtt_ms: float | None = None) -> None:
    """Check ``prediction`` by the wire's rules (see the module docstring) for a frame that asked for ``top_k``
    classes and was answered ``rtt_ms`` after it was sent (``None``: unknown). :func:`invalid_reply` naming the
    first rule broken otherwise. (This runs for every reply: a few microseconds.)"""
    fid = prediction.frame_id
    classes = prediction.classes
    scores = prediction.scores
    labels = prediction.labels
    n = len(classes)
    most = top_k or MAX_CLASSES_PER_REPLY
    if not 1 <= n <= most:
        raise invalid_reply(f"the server's reply has {n} classes (expected 1 to {most})", frame_id=fid, field="classes")
    if len(scores) != n:
        raise invalid_reply(
            f"the server's reply has {len(scores)} scores for {n} classes", frame_id=fid, field="scores"
        )
    if labels and len(labels) != n:
        raise invalid_reply(
            f"the server's reply has {len(labels)} labels for {n} classes", frame_id=fid, field="labels"
        )
    if max(classes) >= MAX_CLASS_ID or len(set(classes)) != n:
        raise invalid_reply(
            f"the server's reply has class ids {_short(list(classes)[:8])} (expected distinct ids below "
            f"{MAX_CLASS_ID})",
            frame_id=fid,
            field="classes",
        )
    low, high = -SCORE_TOLERANCE, 1.0 + SCORE_TOLERANCE
    for score in scores:
        if not low <= score <= high:  # NaN fails too
            raise invalid_reply(
                f"the server's reply has score {_short(score)} (expected a probability in [0, 1])",
                frame_id=fid,
                field="scores",
            )
    if labels and (max(map(len, labels)) > MAX_LABEL_CHARS or _CONTROL.search("".join(labels))):
        label = next(x for x in labels if len(x) > MAX_LABEL_CHARS or _CONTROL.search(x))
        raise invalid_reply(
            f"the server's reply has a label of {len(label)} characters {_short(label[:40])} (expected at most "
            f"{MAX_LABEL_CHARS}, no control characters)",
            frame_id=fid,
            field="labels",
        )
    if max(len(prediction.model), len(prediction.model_version), len(prediction.mode)) > MAX_NAME_CHARS:
        raise invalid_reply(
            f"the server's reply has a model, version or mode over {MAX_NAME_CHARS} characters", frame_id=fid
        )
    timing = prediction.timing
    error = _timing_error(timing, fid)
    if error is not None:
        raise error
    if rtt_ms is not None and timing.total_ms > rtt_ms * 1.01 + SERVER_TIME_TOLERANCE_MS:
        raise invalid_reply(
            f"the server's reply claims {timing.total_ms:.3f} ms of server time in a round trip of {rtt_ms:.3f} ms",
            frame_id=fid,
            field="timing.total_ms",
        )


def check_for_run(prediction: pb.Prediction, *, mode: str, model: str = "", class_names: Sequence[str] = ()) -> None:
    """Check ``prediction`` (checked by :func:`check_prediction` already) against the frame it answers: sent in
    ``mode`` of ``model``, for a bundle with ``class_names`` (empty: unknown). :func:`invalid_reply` naming the
    first rule broken otherwise."""
    fid = prediction.frame_id
    if prediction.mode and prediction.mode != mode:
        raise invalid_reply(
            f"the server's reply is for mode {_short(prediction.mode)}, the frame was sent in {mode!r}", frame_id=fid
        )
    if model and prediction.model and prediction.model != model:
        raise invalid_reply(
            f"the server's reply is for model {_short(prediction.model)}, the frame was of {model!r}", frame_id=fid
        )
    if class_names:
        count = len(class_names)
        labels = prediction.labels
        for i, cls in enumerate(prediction.classes):
            if cls >= count:
                raise invalid_reply(
                    f"the server's reply has class id {cls}, the bundle has {count} classes", frame_id=fid
                )
            if labels and labels[i] != class_names[cls]:
                raise invalid_reply(
                    f"the server's reply names class {cls} {_short(labels[i][:40])}, the bundle calls it "
                    f"{_short(class_names[cls])}",
                    frame_id=fid,
                )


__all__ = [
    "INVALID_REPLY",
    "MAX_CLASSES_PER_REPLY",
    "MAX_CLASS_ID",
    "MAX_LABEL_CHARS",
    "MAX_NAME_CHARS",
    "MAX_SERVER_MS",
    "MIN_REPLY_BYTES",
    "check_for_run",
    "check_prediction",
    "check_timing",
    "invalid_reply",
    "printable",
    "reply_bytes_bound",
]
