"""`sluice batch submit|status|cancel|list`: the Batch API from a terminal.

It talks to ingress over HTTP like any OpenAI client, with the API key from `--api-key`,
`$SLUICE_API_KEY`, or the `endpoints.json` that `sluice dev` writes (same for the URL:
`--url`, `$SLUICE_URL`, then `endpoints.json`). The argparse definitions are here too;
httpx and rich are imported only when a command runs, so `sluice --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.errors import ConfigError, InvalidRequest

if TYPE_CHECKING:
    import httpx

Handler = Callable[[argparse.Namespace], int]
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def add_batch_commands(commands: Any, handler: Callable[[str, str], Handler]) -> None:
    """Add `sluice batch …` to the top-level subparsers `commands`."""
    batch = commands.add_parser("batch", help="OpenAI Batch API: submit and follow batches")
    batch.add_argument("--url", default=None, help="ingress URL (default: $SLUICE_URL or "
                       "the stack `sluice dev` started)")
    batch.add_argument("--api-key", default=None, help="default: $SLUICE_API_KEY or sluice dev's")
    batch.add_argument("--state-dir", type=Path, default=Path(".sluice"))
    sub = batch.add_subparsers(dest="batch_command", required=True)
    submit = sub.add_parser("submit", help="upload a JSONL file and create a batch")
    submit.add_argument("file", type=Path)
    submit.add_argument("--wait", action="store_true", help="follow it with a progress bar")
    submit.add_argument("--output", type=Path, default=None,
                        help="with --wait: write the output here (errors to OUT.errors.jsonl)")
    submit.add_argument("--metadata", action="append", default=[], help="KEY=VALUE")
    status = sub.add_parser("status", help="print a batch as JSON")
    status.add_argument("batch_id")
    cancel = sub.add_parser("cancel", help="cancel a batch (finished lines are kept)")
    cancel.add_argument("batch_id")
    listing = sub.add_parser("list", help="list batches, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--after", default=None, help="batch id to continue after")
    for parser in (submit, status, cancel, listing):
        parser.set_defaults(handler=handler("sluice.batch_cli", "run_batch"))


def endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """(ingress URL, API key) from arguments, environment, then `endpoints.json`."""
    path = args.state_dir / "endpoints.json"
    saved: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    url = args.url or os.environ.get("SLUICE_URL") or saved.get("ingress_url")
    key = args.api_key or os.environ.get("SLUICE_API_KEY") or saved.get("api_key")
    if not url or not key:
        raise ConfigError(f"no ingress to talk to: pass --url and --api-key, set SLUICE_URL "
                          f"and SLUICE_API_KEY, or start `sluice dev` (writes {path})")
    return str(url).rstrip("/"), str(key)


def _checked(response: httpx.Response) -> Any:
    if response.is_error:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise InvalidRequest(f"{response.request.method} {response.request.url.path}: "
                             f"{response.status_code} {message}")
    return response.json()


def run_batch(args: argparse.Namespace, client: httpx.Client | None = None) -> int:
    """Run one `sluice batch` command (tests pass a client with a fake transport)."""
    import httpx

    if client is None:
        url, key = endpoint(args)
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                              timeout=60)
    with client:
        command = args.batch_command
        if command == "submit":
            return _submit(client, args)
        if command == "list":
            params: dict[str, Any] = {"limit": args.limit}
            if args.after:
                params["after"] = args.after
            page = _checked(client.get("/v1/batches", params=params))
            for batch in page["data"]:
                counts = batch["request_counts"]
                print(f"{batch['id']}  {batch['status']:<11} {counts['completed']}/"
                      f"{counts['total']} done, {counts['failed']} failed")
            if page["has_more"]:
                print(f"more: sluice batch list --after {page['last_id']}")
            return 0
        path = f"/v1/batches/{args.batch_id}" + ("/cancel" if command == "cancel" else "")
        response = client.post(path) if command == "cancel" else client.get(path)
        print(json.dumps(_checked(response), indent=2))
        return 0


def _submit(client: httpx.Client, args: argparse.Namespace) -> int:
    metadata = dict(item.split("=", 1) for item in args.metadata if "=" in item)
    with args.file.open("rb") as handle:  # httpx streams the file; it is not read whole
        uploaded = _checked(client.post("/v1/files", data={"purpose": "batch"},
                                        files={"file": (args.file.name, handle)}))
    body: dict[str, Any] = {"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions",
                            "completion_window": "24h"}
    if metadata:
        body["metadata"] = metadata
    batch = _checked(client.post("/v1/batches", json=body))
    print(f"batch {batch['id']} created from {args.file} ({uploaded['bytes']} bytes)")
    if not args.wait:
        return 0
    batch = _follow(client, batch["id"])
    counts = batch["request_counts"]
    print(f"batch {batch['id']} {batch['status']}: {counts['completed']} completed, "
          f"{counts['failed']} failed of {counts['total']}")
    if args.output is not None:
        for file_id, target in ((batch["output_file_id"], args.output),
                                (batch["error_file_id"],
                                 args.output.with_suffix(".errors.jsonl"))):
            if file_id:
                _download(client, file_id, target)
                print(f"wrote {target}")
    return 0 if batch["status"] == "completed" else 1


def _follow(client: httpx.Client, batch_id: str, interval_s: float = 1.0) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("validating", total=None)
        while True:
            batch: dict[str, Any] = _checked(client.get(f"/v1/batches/{batch_id}"))
            counts = batch["request_counts"]
            progress.update(task, description=batch["status"], total=counts["total"] or None,
                            completed=counts["completed"] + counts["failed"])
            if batch["status"] in FINAL:
                return batch
            time.sleep(interval_s)


def _download(client: httpx.Client, file_id: str, target: Path) -> None:
    with client.stream("GET", f"/v1/files/{file_id}/content") as response, \
            target.open("wb") as out:
        if response.is_error:
            response.read()
            _checked(response)
        for chunk in response.iter_bytes():
            out.write(chunk)
