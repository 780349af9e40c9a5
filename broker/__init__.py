"""The shared core: settings, the Kafka port (`kafka/`), budgets, tokens and prices, the
PostgreSQL stores, the error tree, and the embedded services for `sluice dev` and tests."""
