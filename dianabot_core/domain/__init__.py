"""The business rules of the VIP lifecycle and channel content, as database decisions.

Pure domain: no Telegram, no Kafka. Each function takes the caller's session (and an explicit
``now`` where time matters) and never commits: the handler's unit of work commits its effects
together with the events it emits. ``subscriptions`` holds reminders, expiry, kicks and archiving;
``content`` holds scheduled channel posts, their claiming, publishing and recurrence.
"""
