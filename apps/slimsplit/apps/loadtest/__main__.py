"""``python -m slimsplit.apps.loadtest``."""

from slimsplit.apps.loadtest.cli import main

raise SystemExit(main())
