"""The console's reads of the ledger database (its SQL is in `broker.console.store`)."""
