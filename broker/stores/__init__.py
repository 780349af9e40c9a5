"""The core's PostgreSQL stores: every table of the core and the queries over it.

`tables` declares the schema (migrations create it), `database` makes engines and turns
driver errors into `DatabaseUnavailable`; each other module is one store: API keys,
tenants, the price catalog, admission's spend counters, request records and usage
reports. The budget, batch and webhook stores live beside their domain
(`broker/<domain>/store.py`); the worker services' own queries live in their `store`
modules. SQL is written nowhere else (an import-linter contract keeps it so).
"""
