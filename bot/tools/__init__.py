"""Built-in tools with no platform of their own (the clock, the web) and the turn's tool box."""
