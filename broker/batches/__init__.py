"""The OpenAI Batch API's shared core: file storage, batch state, and line formats.

Ingress (the `/v1/files` and `/v1/batches` routes) and `workers.batches` (which launches,
tracks and finalizes batches) never import each other, so what both need lives here.
"""
