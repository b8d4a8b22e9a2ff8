"""Scheduled jobs: the daily usage digest and its APScheduler wiring."""
