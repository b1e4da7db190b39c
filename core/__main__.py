"""``python -m core`` is the operator CLI, ``python -m core.cli`` (see core/cli/)."""

import sys

from core.cli import main

sys.exit(main())
