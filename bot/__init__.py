"""A self-hosted Slack assistant for GLM-5 on the AI/ML API."""
