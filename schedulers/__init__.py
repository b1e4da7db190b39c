"""The scheduler service: emits ``scheduler.tick`` events for periodic jobs, from several replicas, once.

jobs.py      the job table: every periodic job, its cron (bot's timezone) and its policies
settings.py  DIANABOT_SCHEDULER__* settings: jobs on/off, per-job overrides, lock key, tick topic
cron.py      cron expressions evaluated to UTC slots, daylight-saving changes handled
planning.py  which ticks are due now: misfire grace and catch-up policies (pure)
ticker.py    the leader's loop: sleep until the next slot, emit, never drift
state.py     each job's last slot in PostgreSQL, advanced with its ticks in one outbox transaction
leader.py    leader election by a PostgreSQL advisory lock on a dedicated connection
service.py   one replica: standby until it leads, then the ticker and the tick relay
app.py       ``faststream run schedulers.app:app``
cli.py       ``dianabot jobs list|trigger`` (also ``python -m schedulers list|trigger JOB``)
"""
