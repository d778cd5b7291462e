"""From each client's outcome to its row (:class:`ClientResult`) and the figures of all clients (:class:`Overall`),
and the exit status they make (:func:`load_exit_status`: the edge's exit rule over all clients' frames)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from slimsplit.apps.loadtest.plan import ClientPlan
from slimsplit.apps.loadtest.run import ClientOutcome
from slimsplit.control.base import ModeOption
from slimsplit.edge import cli_common
from slimsplit.edge.config import ExitRule
from slimsplit.edge.link import LinkTooSlow
from slimsplit.errors import SlimsplitError
from slimsplit.evaluation.link_check import LinkCheck, check_link
from slimsplit.records import SKIPPED, FrameRecord, LatencyStats, RunSummary


def clean(obj: Any) -> Any:
    """JSON-ready: non-finite floats become ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


@dataclass(frozen=True)
class ClientResult:
    """What one client did: its link, its summary (``None`` when it could not run, with ``error``; ``link_too_slow``:
    its link did not carry the start-up exchange), its frames and, over an emulated link, what the link allowed
    (:mod:`slimsplit.evaluation.link_check`); ``device_id``: the device it authenticated as (``None``: not known
    to the load tester: plaintext, in-process, or one shared identity)."""

    index: int
    link: str
    link_description: str
    offset_s: float
    device_id: str | None = None
    summary: RunSummary | None = None
    results: tuple[FrameRecord, ...] = ()
    rtt_ms: float | None = None
    error: str = ""
    link_check: LinkCheck | None = None
    link_too_slow: bool = False

    def accounting(self) -> dict[str, int]:
        """Where every frame went: ``hits + late + skipped + dropped + errors == frames`` (errors = frames that
        failed before they were sent)."""
        s = self.summary
        if s is None:
            return {"frames": 0, "hits": 0, "late": 0, "skipped": 0, "dropped": 0, "errors": 0}
        unsent = sum(1 for r in self.results if not r.ok and not r.sent and r.status != SKIPPED)
        return {
            "frames": s.frames,
            "hits": s.hits,
            "late": s.late,
            "skipped": sum(s.skipped.values()),
            "dropped": sum(s.dropped.values()),
            "errors": unsent,
        }

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "index": self.index,
            "device_id": self.device_id,
            "link": self.link,
            "link_description": self.link_description,
            "offset_s": self.offset_s,
            "rtt_ms": self.rtt_ms,
            "error": self.error or None,
            **self.accounting(),
            "summary": self.summary.to_dict() if self.summary is not None else None,
            "link_check": self.link_check.to_dict() if self.link_check is not None else None,
        }
        out: dict[str, Any] = clean(d)
        return out


@dataclass(frozen=True)
class Overall:
    """All clients together. ``delivered_fps`` = answered frames per second of the whole run; ``hit_rate`` =
    frames answered in time / all frames; ``server_ms``/``queue_ms``/``tail_ms`` = the server's own timing of
    every answered frame (from the predictions); ``by_status`` = frames not answered, by status; ``allowed`` =
    frames the emulated links allowed in some mode and ``hits_allowed`` = those answered in time (both ``None``
    when no client ran over an emulated link)."""

    clients: int
    failed_clients: int
    wall_s: float
    frames: int
    answered: int
    hits: int
    late: int
    skipped: int
    dropped: int
    errors: int
    delivered_fps: float
    in_time_fps: float
    hit_rate: float | None
    accuracy: float | None
    bytes_per_frame: float
    uplink_payload_bytes: int
    latency_ms: LatencyStats
    server_ms: LatencyStats
    queue_ms: LatencyStats
    tail_ms: LatencyStats
    mean_batch_size: float | None
    by_status: dict[str, int]
    allowed: int | None = None
    hits_allowed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = clean(asdict(self))
        return out


def aggregate(clients: Sequence[ClientResult], wall_s: float) -> Overall:
    """The overall figures of a run that took ``wall_s`` seconds."""
    books = [c.accounting() for c in clients]
    frames = [r for c in clients for r in c.results]
    done = [r for r in frames if r.ok]
    timed = [r.server for r in done if r.server is not None]
    judged = [r.correct for r in done if r.correct is not None]
    sent = [r for r in frames if r.payload_bytes > 0]
    batches = [t.batch_size for t in timed if t.batch_size > 0]
    hits = sum(b["hits"] for b in books)
    statuses = Counter(r.status for r in frames if not r.ok)
    checks = [c.link_check for c in clients if c.link_check is not None]
    return Overall(
        clients=len(clients),
        failed_clients=sum(1 for c in clients if c.summary is None),
        wall_s=wall_s,
        frames=len(frames),
        answered=len(done),
        hits=hits,
        late=sum(b["late"] for b in books),
        skipped=sum(b["skipped"] for b in books),
        dropped=sum(b["dropped"] for b in books),
        errors=sum(b["errors"] for b in books),
        delivered_fps=len(done) / wall_s if wall_s > 0 else math.nan,
        in_time_fps=hits / wall_s if wall_s > 0 else math.nan,
        hit_rate=hits / len(frames) if frames else None,
        accuracy=sum(judged) / len(judged) if judged else None,
        bytes_per_frame=sum(r.payload_bytes for r in sent) / len(sent) if sent else 0.0,
        uplink_payload_bytes=sum(r.payload_bytes for r in sent),
        latency_ms=LatencyStats.of([r.latency_ms for r in done]),
        server_ms=LatencyStats.of([t.total_ms for t in timed]),
        queue_ms=LatencyStats.of([t.queue_ms for t in timed]),
        tail_ms=LatencyStats.of([t.tail_ms for t in timed]),
        mean_batch_size=sum(batches) / len(batches) if batches else None,
        by_status=dict(statuses.most_common()),
        allowed=sum(c.allowed for c in checks) if checks else None,
        hits_allowed=sum(c.hits_allowed for c in checks) if checks else None,
    )


def collect(
    plans: Sequence[ClientPlan],
    outcomes: Sequence[ClientOutcome],
    table: Sequence[ModeOption] = (),
    usable: Sequence[str] = (),
    device_ids: Sequence[str | None] = (),
) -> list[ClientResult]:
    """Pair each client's plan with its outcome (and its device id, ``device_ids[i]``, when given). A client
    stopped by a slimsplit error, a socket error or the time limit becomes a failed row; anything else is a bug
    and is raised. With the controller's mode ``table`` (and the ``usable`` mode names), a client over an emulated
    link also gets its :class:`LinkCheck`."""
    clients = []
    for plan, outcome in zip(plans, outcomes, strict=True):
        device = device_ids[plan.index] if plan.index < len(device_ids) else None
        base = ClientResult(plan.index, plan.link_spec, plan.describe(), plan.offset_s, device)
        if isinstance(outcome, SlimsplitError | OSError | TimeoutError):
            error = str(outcome) or type(outcome).__name__
            clients.append(replace(base, error=error, link_too_slow=isinstance(outcome, LinkTooSlow)))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            report, summary = outcome
            check = None
            if plan.link is not None and table:
                check = check_link(report.results, table, plan.link.config, set(usable))
            results = tuple(report.results)
            clients.append(replace(base, summary=summary, results=results, rtt_ms=report.rtt_ms, link_check=check))
    return clients


def load_failure(clients: Sequence[ClientResult], rule: ExitRule | None = None) -> str | None:
    """Why a load test in which some client ran failed: a client could not run, or all clients' frames together
    fail ``rule`` (:meth:`~slimsplit.edge.config.ExitRule.failure`); ``None`` when it passed."""
    ran = [c.summary for c in clients if c.summary is not None]
    if len(ran) < len(clients):
        return f"{len(clients) - len(ran)} of {len(clients)} clients could not run"
    return (rule or ExitRule()).failure(
        frames=sum(s.frames for s in ran),
        answered=sum(s.ok for s in ran),
        hits=sum(s.hits for s in ran),
        sent=sum(s.ok + sum(s.dropped.values()) for s in ran),
    )


def load_exit_status(clients: Sequence[ClientResult], rule: ExitRule | None = None) -> int:
    """3 = no client ran (2 when every one was stopped by a link too slow for its start-up exchange); 1 = some
    client could not run, or all clients' frames together fail ``rule`` (:func:`load_failure`); 0 otherwise."""
    if not any(c.summary is not None for c in clients):
        usage = bool(clients) and all(c.link_too_slow for c in clients)
        return cli_common.EXIT_USAGE if usage else cli_common.EXIT_SERVER
    return cli_common.EXIT_FAILED if load_failure(clients, rule) is not None else 0


__all__ = ["ClientResult", "Overall", "aggregate", "clean", "collect", "load_exit_status", "load_failure"]
