"""What the cleanup job may purge of Telegram delivery's tables, in bounded batches.

The send ledger and the broadcast recipients are private to this package; retention is the one
thing about them that belongs to a job outside it.
"""

from dianabot_core.telegram.broadcasts import purge_recipients_before
from dianabot_core.telegram.ledger import purge_sends_before

__all__ = ["purge_recipients_before", "purge_sends_before"]
