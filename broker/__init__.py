"""The shared core: settings, Kafka plumbing, tokens, database tables, errors, fakes."""
