"""The reliable event pipeline every handler rides on.

records.py   decoding Kafka records into envelopes, or a reason they are malformed
ledger.py    the processed-events ledger (idempotency by event id)
errors.py    transient vs permanent failures, and infrastructure outages
handlers.py  how domain modules declare handlers (HandlerGroup) and what a handler gets (HandlerContext)
routing.py   retry topics with growing delays, and the dead-letter topic
runner.py    processing a batch: ledger + effects in one transaction, time limits, failure routing
consumer.py  FastStream wiring: one consumer group per handler, manual commits after the effects
"""
