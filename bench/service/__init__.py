"""The service benchmark: the one consumers process users run, measured as it runs.

``faststream run consumers.app:app`` holds every handler's consumers (a main group per handler and
topic lane, plus one group per retry stage). It is started once by the chaos harness
(``bench/chaos/cluster.py``) against a database of its own (recreated, migrated, with fixtures) and
the Bot API double, with no scheduler (its ticks would be noise), after every consumer group of the
service has been committed at the end of its topics (so only the bench's records are seen). Then:

1. Idle: once /readyz answers and every group is stable with the process as a member, wait
   `settle` seconds, then sample utime + stime (children included) and RSS from ``/proc`` for
   `idle` seconds with no events: CPU as a percentage of one core, and memory.
2. Drains: a backlog of each kind, published as fast as the producer takes it while the process
   runs, handled by its handler: ``user.activity`` (existing users), ``subscription.expired`` for
   subscriptions renewed in time (``remove_expired_member`` locks and checks, no Bot API call) and
   ``notification.requested`` (bulk, sent to the double; the rate is Telegram's limit, reported with
   it). Rate = events handled after the first commit / (last commit - first commit).
3. Latency: ``user.activity`` (a batch handler) and ``user.registered`` (a per-event handler) at
   `rate`/s for `seconds` each, then ``user.registered`` again at `per_event_rate`/s (at `rate` a
   per-event handler may not keep up, and its latency is then queueing: each phase reports the
   handler's rate and how long after the last publish the last commit came). Latency = the commit
   time of the transaction that recorded the event in the handler's ledger (and applied its effect)
   - the wall-clock time just before the event was handed to the producer (same host, same clock):
   it spans the producer, the broker, the fetch, the handling and the commit.

Commit times are PostgreSQL's commit timestamps of the ledger rows (see ``bench/service/ledger.py``).
Every phase checks that the handler's ledger holds each published event once and nothing else;
at the end the effects are checked too (``last_active_at``, users created, nothing kicked, each
notification delivered once, no dead letters). Any mismatch raises ``NotExactlyOnceError``.

Run: ``python -m bench.service`` (one JSON line on stdout); from code: ``run_service_bench``.
Other load on the machine (a 2-core dev box) shows in the figures: the load average at the start
is reported with them.
"""

from bench.service.ledger import NotExactlyOnceError
from bench.service.run import run_service_bench

__all__ = ["NotExactlyOnceError", "run_service_bench"]
