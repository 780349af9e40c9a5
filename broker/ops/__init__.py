"""Operations endpoints shared by every long-running process: liveness, readiness, status.

- `OpsServer` (`broker.ops.server`): `/livez`, `/readyz`, `/status`, `/metrics`.
- `Readiness`, `CachedProbe`, `flag` (`broker.ops.readiness`): what "ready" means for a
  process, assembled from named checks at its composition root.
"""

from broker.ops.readiness import CachedProbe, Check, Probe, Readiness, Verdict, flag
from broker.ops.server import MetricsSource, OpsServer, Snapshot

__all__ = ["CachedProbe", "Check", "MetricsSource", "OpsServer", "Probe", "Readiness",
           "Snapshot", "Verdict", "flag"]
