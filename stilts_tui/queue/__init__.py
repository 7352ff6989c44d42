"""The queue: adding plans, and (later) the daemon that runs them."""
