"""The embedded local runtime: the same template, state machine and handlers on one machine, offline."""
