"""`sluice dead-letters list|replay`: inspect the dead-letter topic and send entries back.

The reading and replaying live in `broker.kafka.dead_letters`, shared with the console;
this module is the command line over them.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from broker.errors import InvalidRequest
from broker.kafka.dead_letters import DeadLetter, read_dead_letters, replay, to_dead_letter
from broker.settings import KafkaSettings

__all__ = ["DeadLetter", "read_dead_letters", "replay", "run_dead_letters", "to_dead_letter"]


def run_dead_letters(args: argparse.Namespace) -> int:
    """`sluice dead-letters list [--limit N]` / `replay (--id P:O ... | --all)`."""
    kafka = KafkaSettings()
    if args.dead_letters_command == "list":
        for entry in asyncio.run(read_dead_letters(kafka, args.limit)):
            print(json.dumps(entry.summary()))
        return 0
    wanted = set(args.id or ())
    if not wanted and not args.all:
        raise InvalidRequest("replay needs --id PARTITION:OFFSET (repeatable) or --all")
    entries = [e for e in asyncio.run(read_dead_letters(kafka)) if args.all or e.id in wanted]
    missing = wanted - {entry.id for entry in entries}
    if missing:
        raise InvalidRequest(f"no dead letter with id {', '.join(sorted(missing))}")
    sent = asyncio.run(replay(kafka, entries))
    print(f"replayed {sent} dead letter(s) to their original topics")
    return 0
