"""What the benches read of running processes: a process tree and its CPU time (psutil)."""

from __future__ import annotations

import psutil


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        children = []
    return [root, *(child.pid for child in children)]


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of ``root``'s process tree: each live process's own time plus that of its
    reaped children."""
    total = 0.0
    for pid in process_tree(root):
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue  # it exited meanwhile
        total += t.user + t.system + t.children_user + t.children_system
    return total


__all__ = ["process_tree", "tree_cpu_seconds"]
