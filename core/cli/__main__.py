"""``python -m core.cli``: the operator CLI (see ``core.cli``)."""

import sys

from core.cli import main

sys.exit(main())
