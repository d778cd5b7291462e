"""``slimsplit-loadtest``: many emulated edge clients against one slimsplit server, each over its own emulated link.

Every client is a complete edge, the same :class:`~slimsplit.edge.run.EdgeRun` that ``slimsplit-edge`` runs: its
own ONNX Runtime encoder session (the encoder's current mode is per-session state), its own controller, and its own
shaping proxy on 127.0.0.1 driven by a bandwidth trace or a rate. Client ``i`` uses the ``--link`` spec
``i mod len(specs)`` and starts ``--link-offset-s + i * --offset-stride-s`` seconds into its trace, so clients that
share a trace do not see the same link state at the same instant. All clients run concurrently in one asyncio event
loop. The server is an address (``--server``), a ``slimsplit-server`` process started on a free loopback port and
stopped at the end (``--start-server``), or an inference core in this process, without gRPC or links
(``--in-process``); both need the server extra.

Security (:mod:`~slimsplit.apps.loadtest.security`): a started server serves TLS + mTLS with a devices file, and
client ``i`` is device ``loadtest-III`` with its own certificate and bearer token from a temporary development PKI
(``--no-tls``: plaintext); against ``--server`` the clients use ``--tls-ca``/``--tls-cert``/``--tls-key``/
``--token-file`` (one identity for all) or ``--credentials DIR`` (one device each); ``--in-process`` has no gRPC, so
no TLS and no tokens. The table and the JSON name each client's device.

Output: a plain progress line every ``--every`` seconds (stderr), then one row per client and the overall figures
(stdout); ``--json-out`` writes the per-client summaries and the overall figures.

Exit status (:data:`~slimsplit.edge.cli_common.EXIT_STATUS_HELP`): 0 = every client ran and all clients' frames
together pass the edge's exit rule (:class:`~slimsplit.edge.config.ExitRule`: some frame answered,
``--min-hit-rate``, ``--max-drop-rate``); 1 = they do not, or some clients could not run or did not finish within
``--time-limit-s``; 2 = a usage problem found before the run (bad flag, missing trace, bundle or source, unwritable
``--json-out``, a server that refused its configuration or bundle), or every client's link too slow to carry the
start-up exchange; 3 = no client could run (server unreachable, not serving the bundle, or a started server that
crashed or was not ready in time); 130 = interrupted (Ctrl-C during the frames: the table and ``--json-out`` cover
the frames before it, with ``"interrupted": true``); 141 = output pipe closed.

Modules: :mod:`~slimsplit.apps.loadtest.args` (flags), :mod:`~slimsplit.apps.loadtest.plan` (links, set-up, runs),
:mod:`~slimsplit.apps.loadtest.run` (running the clients), :mod:`~slimsplit.apps.loadtest.aggregate` (per-client
rows, overall figures, exit status), :mod:`~slimsplit.apps.loadtest.report` (table and JSON),
:mod:`~slimsplit.apps.loadtest.security` (credentials),
:mod:`~slimsplit.apps.loadtest.server_process` (``--start-server``), :mod:`~slimsplit.apps.loadtest.cli` (main).
"""

from slimsplit.apps.loadtest.args import build_parser
from slimsplit.apps.loadtest.cli import main

__all__ = ["build_parser", "main"]
