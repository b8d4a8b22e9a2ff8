"""MCP servers as tools for the model: the config file, one link per server, and the tool box."""
