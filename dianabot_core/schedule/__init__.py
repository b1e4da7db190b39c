"""The job table and its cron rules: what runs when, read by the scheduler service (which emits
the ticks) and by the monitoring checks (which notice a job that stopped running)."""
