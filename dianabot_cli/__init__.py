"""``dianabot``: the operator's console command (see ``dianabot_cli.app``).

It sits above the services, as the one place that may import both: ``dianabot_core.cli`` (dead letters,
lag, broadcasts), ``schedulers.cli`` (jobs) and ``consumers.registry`` (handler names to complete).
"""
