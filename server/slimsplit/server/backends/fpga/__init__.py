"""FPGA backends: the InTAR cost model and scheduler, a fixed-point emulator and an XRT driver.

Public API (everything else in this package is internal):

* :class:`FpgaEmuBackend` (``fpga-emu``) and :class:`FpgaBackend` (``fpga``), configured by :class:`FpgaConfig`;
  :func:`create_backend` builds either from the server's ``BackendConfig`` (see :mod:`.factory` for the options);
* platforms: :func:`load_platform`, :class:`Platform`, :class:`ResourceBudget`, :class:`Design`;
* task graphs and scheduling: :class:`TaskGraph`, :class:`GraphBuilder`, :func:`compare`, :func:`schedule_intar`,
  :func:`schedule_dataflow`, :func:`schedule_sequential`, :class:`Schedule`;
* compilation and emulation: :func:`compile_onnx`, :func:`to_task_graph`, :class:`FixedPointProgram`;
* reports: :func:`schedule_table`, :func:`plot_timelines`.
"""

from slimsplit.server.backends.fpga.backend import FpgaBackend, FpgaEmuBackend, FpgaEmuRunner, FpgaRunner
from slimsplit.server.backends.fpga.config import FpgaConfig
from slimsplit.server.backends.fpga.cost import CostModel, Pattern
from slimsplit.server.backends.fpga.emulator import FixedPointProgram
from slimsplit.server.backends.fpga.factory import create_backend, fpga_config_from_options
from slimsplit.server.backends.fpga.lowering import to_task_graph
from slimsplit.server.backends.fpga.onnx_import import compile_onnx
from slimsplit.server.backends.fpga.platform import Design, Platform, ResourceBudget, load_platform, shipped_platforms
from slimsplit.server.backends.fpga.report import plot_timelines, schedule_table
from slimsplit.server.backends.fpga.scheduler import (
    Comparison,
    Schedule,
    compare,
    schedule_dataflow,
    schedule_intar,
    schedule_sequential,
)
from slimsplit.server.backends.fpga.tasks import DType, GraphBuilder, TaskGraph

__all__ = [
    "Comparison",
    "CostModel",
    "DType",
    "Design",
    "FixedPointProgram",
    "FpgaBackend",
    "FpgaConfig",
    "FpgaEmuBackend",
    "FpgaEmuRunner",
    "FpgaRunner",
    "GraphBuilder",
    "Pattern",
    "Platform",
    "ResourceBudget",
    "Schedule",
    "TaskGraph",
    "compare",
    "compile_onnx",
    "create_backend",
    "fpga_config_from_options",
    "load_platform",
    "plot_timelines",
    "schedule_dataflow",
    "schedule_intar",
    "schedule_sequential",
    "schedule_table",
    "shipped_platforms",
    "to_task_graph",
]
