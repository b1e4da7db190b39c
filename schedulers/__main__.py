"""``python -m schedulers list`` / ``python -m schedulers trigger JOB`` (see schedulers/cli.py)."""

from schedulers.cli import main

raise SystemExit(main())
