"""The terminal app (Textual). A client of the ledger and the run folders: it can be closed,
reopened, or opened twice from two SSH sessions; runs outlive it."""
