"""The queue: the client operations on it (ops) and the daemon that runs it (placement, executors,
GPUs, MPS)."""
