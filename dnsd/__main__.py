"""`python -m dnsd` runs the same entry point as the `dnsd` console script."""

from dnsd.cli import main

raise SystemExit(main())
