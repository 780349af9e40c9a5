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
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT []
