"""Tail backends behind one interface (:mod:`.base`) and the registry that picks one by name."""

from slimsplit.server.backends.base import Backend, TailOutput, TailRunner
from slimsplit.server.backends.registry import backend_names, create_backend

__all__ = ["Backend", "TailOutput", "TailRunner", "backend_names", "create_backend"]
