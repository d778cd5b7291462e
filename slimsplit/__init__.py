"""slimsplit: edge-cloud split computing with slimmable encoders that follow the link.

Sub-packages by role:

* ``slimsplit.edge``   - the device side (numpy, onnxruntime, grpcio, protobuf only; never torch)
* ``slimsplit.server`` - the host side: gRPC service, backends (ONNX Runtime, PyTorch, FPGA), model training/export
* ``slimsplit.codec``  - the feature codec shared by both sides (pure numpy)
* ``slimsplit.bundle`` - the model bundle: manifest schema, loading and validation (no torch)
* ``slimsplit.link``   - link emulation: bandwidth traces, shaping proxy, discrete-event simulation
* ``slimsplit.v1``     - generated protobuf/gRPC stubs of ``protos/slimsplit/v1``
"""

from slimsplit.errors import SlimsplitError

__version__ = "0.1.0"

__all__ = ["SlimsplitError", "__version__"]
