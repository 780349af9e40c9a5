"""The response cache (README "Caching"): keys, settings, answers and vectors.

- `config`: a model's `cache:` settings (off unless set).
- `keys`: the canonical hash of a request (exact key) and the semantic split (last user
  turn + hash of the rest).
- `answers`: the in-process LRU of answers in front of PostgreSQL.
- `embedding`: all-MiniLM-L6-v2 sentence vectors in numpy (the `semantic` extra).
- `index`: the in-process vector index per tenant, model and conversation rest.
- The SQL lives in `broker.stores.response_cache` (the `response_cache` table, and
  recording hits in the ledger tables): stores import this package, never the reverse.

Ingress looks answers up (`ingress.cache`); the ledger keeps them (`keep_answers`).
"""
