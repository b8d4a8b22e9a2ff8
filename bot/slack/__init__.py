"""The Slack edge: Bolt listeners, event filtering, and the streaming message renderer."""
