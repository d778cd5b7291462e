"""Backend names -> factories. Backends are imported only when chosen (torch and the FPGA stack are heavy).

The FPGA backends live in ``slimsplit.server.backends.fpga``, which provides
``create_backend(name: str, config: BackendConfig) -> Backend`` for the names ``fpga-emu`` and ``fpga``.
"""

from __future__ import annotations

import importlib

from slimsplit.errors import BackendError, ConfigError
from slimsplit.server.backends.base import Backend
from slimsplit.server.config import BackendConfig

# name -> (module, attribute, takes the backend name as first argument)
_BACKENDS: dict[str, tuple[str, str, bool]] = {
    "onnxruntime": ("slimsplit.server.backends.onnxruntime_backend", "OnnxRuntimeBackend", False),
    "torch": ("slimsplit.server.backends.torch_backend", "TorchBackend", False),
    "null": ("slimsplit.server.backends.null_backend", "NullBackend", False),
    "fpga-emu": ("slimsplit.server.backends.fpga", "create_backend", True),
    "fpga": ("slimsplit.server.backends.fpga", "create_backend", True),
}


def backend_names() -> tuple[str, ...]:
    """Every backend name the server knows (whether or not its dependencies are installed)."""
    return tuple(_BACKENDS)


def create_backend(config: BackendConfig) -> Backend:
    """Instantiate the backend ``config.name``; a missing optional dependency is a clear BackendError."""
    entry = _BACKENDS.get(config.name)
    if entry is None:
        raise ConfigError(f"unknown backend {config.name!r}; choose one of: {', '.join(_BACKENDS)}", key="backend.name")
    module_name, attr, takes_name = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(
            f"backend {config.name!r} is not available: importing {module_name} failed ({exc})",
            backend=config.name,
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise BackendError(f"backend {config.name!r}: {module_name} has no {attr}", backend=config.name)
    backend = factory(config.name, config) if takes_name else factory(config)
    if not isinstance(backend, Backend):
        raise BackendError(
            f"backend {config.name!r}: {module_name}.{attr} did not return a Backend", backend=config.name
        )
    return backend
