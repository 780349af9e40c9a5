"""The HTTP edge: an OpenAI-compatible API that turns requests into Kafka messages."""
