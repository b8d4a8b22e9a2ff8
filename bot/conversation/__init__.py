"""Conversation domain: turns, history and context budget, per-thread ordering."""
