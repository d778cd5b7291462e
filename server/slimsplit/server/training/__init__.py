"""Training (torch): data rendering, the three-stage slimmable recipe, and the ``slimsplit-train`` CLI."""
