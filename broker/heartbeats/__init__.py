"""Worker heartbeats in PostgreSQL: what each worker process reports about itself."""
