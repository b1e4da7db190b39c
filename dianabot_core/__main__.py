"""``python -m dianabot_core`` is the operator CLI, ``python -m dianabot_core.cli`` (see cli/)."""

import sys

from dianabot_core.cli import main

sys.exit(main())
