"""The model policy: what decides the next tool calls."""
