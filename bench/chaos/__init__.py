"""Chaos suite: the real service under faults and hostile input, checked for lost and doubled work.

``make chaos`` (``python -m bench.chaos``) runs the real processes: two or more consumer processes,
two scheduler replicas and the Bot API double. An outside producer publishes the run's events
(several event types, some of them twice) with hostile records among them, while the suite kills
consumers with SIGKILL, crashes PostgreSQL for 30 s, restarts the Kafka broker and kills the
scheduler leader. When the service has drained, it compares the effects in the database, the
messages at the double and the dead letters with what the events demanded, and prints one JSON
line; the exit status is 1 when a target is missed.

Modules: ``workload`` (valid events and fixtures), ``fuzz`` (hostile records), ``cluster``
(processes, Kafka and PostgreSQL), ``faults`` (schedule and injection), ``progress`` (lag samples,
idle windows, recoveries), ``expect`` and ``verify`` (what had to happen, what did), ``run``.
"""
