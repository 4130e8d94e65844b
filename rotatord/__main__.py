"""``python -m rotatord``: the same as the ``rotatord`` console script."""

from rotatord.cli import main

raise SystemExit(main())
