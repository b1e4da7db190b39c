"""``python -m dianabot_core.cli``: the operator CLI (see ``dianabot_core.cli``)."""

import sys

from dianabot_core.cli import main

sys.exit(main())
