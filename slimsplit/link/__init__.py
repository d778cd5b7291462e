"""Link emulation: bandwidth traces, the shaping model, a shaping TCP proxy, a kernel (netns + tbf) path and a
discrete-event simulator that share one model of the bottleneck.

* :class:`Trace` (:mod:`.trace`): Mahimahi traces, constant rates; :mod:`.synth`: Markov / Gilbert–Elliott traces
* :class:`LinkConfig`, :class:`LinkDirection` (:mod:`.shaping`): bottleneck queue + propagation delay
* :class:`ShapingProxy`, :func:`proxy_in_thread` (:mod:`.proxy`): asyncio TCP proxy on loopback
* :func:`simulate`, :func:`summarize` (:mod:`.sim`): the edge pipeline in virtual time
* :class:`NetnsLink` (:mod:`.netns`): two namespaces + veth + ``tc tbf`` (root)
* :class:`FrameEchoServer`, :func:`run_frames` (:mod:`.loadgen`): a real frame workload over sockets
"""

from slimsplit.link.loadgen import FRAME_HEADER_BYTES, REPLY_BYTES, FrameEchoServer, run_frames
from slimsplit.link.netns import NetnsConfig, NetnsLink, kernel_path_available
from slimsplit.link.proxy import ProxyConfig, ShapingProxy, proxy_in_thread
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES, Link, LinkConfig, LinkDirection
from slimsplit.link.sim import SimConfig, SimResult, simulate, summarize
from slimsplit.link.synth import MarkovModel, PiecewiseModel, gilbert_elliott, shipped_traces_dir
from slimsplit.link.trace import Trace, load_mahimahi, load_trace_spec, parse_mahimahi, parse_rate, write_mahimahi

__all__ = [
    "DEFAULT_QUEUE_BYTES",
    "FRAME_HEADER_BYTES",
    "REPLY_BYTES",
    "FrameEchoServer",
    "Link",
    "LinkConfig",
    "LinkDirection",
    "MarkovModel",
    "NetnsConfig",
    "NetnsLink",
    "PiecewiseModel",
    "ProxyConfig",
    "ShapingProxy",
    "SimConfig",
    "SimResult",
    "Trace",
    "gilbert_elliott",
    "kernel_path_available",
    "load_mahimahi",
    "load_trace_spec",
    "parse_mahimahi",
    "parse_rate",
    "proxy_in_thread",
    "run_frames",
    "shipped_traces_dir",
    "simulate",
    "summarize",
    "write_mahimahi",
]
