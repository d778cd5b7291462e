"""Link emulation: bandwidth traces, the shaping model, a shaping TCP proxy and a kernel (netns + tbf) path that
share one model of the bottleneck. It knows nothing of controllers (the simulator is in :mod:`slimsplit.evaluation`).

* :class:`Trace` (:mod:`.trace`): Mahimahi traces, constant rates; :mod:`.synth`: Markov / Gilbert–Elliott traces
* :class:`LinkConfig`, :class:`LinkDirection` (:mod:`.shaping`): bottleneck queue + propagation delay
* :class:`ShapingProxy`, :func:`proxy_in_thread` (:mod:`.proxy`): asyncio TCP proxy on loopback
* :class:`NetnsLink` (:mod:`.netns`): two namespaces + veth + ``tc tbf`` (root)
"""

from slimsplit.link.netns import NetnsConfig, NetnsLink, kernel_path_available
from slimsplit.link.proxy import ProxyConfig, ShapingProxy, proxy_in_thread
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES, Link, LinkConfig, LinkDirection
from slimsplit.link.synth import MarkovModel, PiecewiseModel, gilbert_elliott, shipped_traces_dir
from slimsplit.link.trace import Trace, load_mahimahi, load_trace_spec, parse_mahimahi, parse_rate, write_mahimahi

__all__ = [
    "DEFAULT_QUEUE_BYTES",
    "Link",
    "LinkConfig",
    "LinkDirection",
    "MarkovModel",
    "NetnsConfig",
    "NetnsLink",
    "PiecewiseModel",
    "ProxyConfig",
    "ShapingProxy",
    "Trace",
    "gilbert_elliott",
    "kernel_path_available",
    "load_mahimahi",
    "load_trace_spec",
    "parse_mahimahi",
    "parse_rate",
    "proxy_in_thread",
    "shipped_traces_dir",
    "write_mahimahi",
]
