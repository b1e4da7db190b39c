"""``python -m dianabot_cli``: the ``dianabot`` console command without installing it."""

from dianabot_cli.app import main

raise SystemExit(main())
