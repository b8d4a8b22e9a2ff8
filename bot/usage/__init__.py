"""Usage domain: ledger aggregation, the daily digest report and per-person numbers (data, not Slack)."""
