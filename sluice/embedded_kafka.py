"""The embedded broker a self-contained command starts: Apache Kafka, or Tansu.

`sluice bench budget` and `lanes` bring their own broker. Apache Kafka is the engine
whose figures count (production runs it); Tansu is there for machines without Java.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from broker.apache_kafka import ApacheKafka, missing_tools
from broker.embedded import EmbeddedKafka
from broker.settings import KafkaEngine


@contextlib.contextmanager
def embedded_kafka(engine: KafkaEngine) -> Iterator[tuple[str, KafkaEngine]]:
    """Start the chosen broker (Tansu where Apache Kafka cannot run); its address and engine."""
    if engine == "apache" and missing_tools():
        print(f"Apache Kafka needs {' and '.join(missing_tools())}; using the embedded "
              "Tansu broker instead (apt-get install openjdk-17-jre-headless maven)")
        engine = "tansu"
    if engine == "apache":
        with ApacheKafka(nodes=1, fast_start=False, progress=print) as kafka:
            yield kafka.bootstrap, engine
    else:
        with EmbeddedKafka() as tansu:
            yield tansu.bootstrap, engine
