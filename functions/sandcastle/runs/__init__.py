"""The run domain: requests, statuses, budgets and the steps of the run loop."""
