"""Long-running consumers: the inference pool, provider adapters, the ledger writer."""
