"""What is kept on disk: the ledger (TinyDB) and the run folders."""
