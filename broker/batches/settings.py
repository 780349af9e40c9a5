"""Batch settings, read from the environment once, at the edge (`SLUICE_BATCH_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchSettings(BaseSettings):
    """Where file contents live and how large a batch may be (OpenAI's limits by default)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", frozen=True, extra="ignore")

    # 'postgres': chunks in `batch_file_chunks` (nothing else to run or back up);
    # 'disk': one file per upload under `batch_file_dir` (shared by every ingress/ledger).
    batch_file_storage: Literal["postgres", "disk"] = "postgres"
    batch_file_dir: Path = Path(".sluice/files")
    batch_max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    batch_max_lines: int = Field(default=50_000, ge=1)
    # One line is one request: past this it is not read, only answered in the error file
    # (the interactive body cap, SLUICE_MAX_BODY_BYTES, has the same default).
    batch_max_line_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Bytes of files (uploads and batch outputs) one tenant may keep; uploads past it are
    # refused until files are deleted. Outputs are always written (a batch must finish).
    max_file_storage_bytes_per_tenant: int = Field(default=10 * 1024**3, ge=1)
    # How often the tracker looks for batches to launch, finalize or expire.
    batch_poll_interval_s: float = Field(default=0.2, gt=0)
    # A cancelling batch ends `cancelled` at the latest this long after the cancel, even if
    # some lines never answered (their worker died): they are reported as cancelled.
    batch_cancel_grace_s: float = Field(default=30.0, gt=0)
    # The native batch lane (deployments with `batch: native`, `workers.batches.native`):
    # how often each upstream batch is asked how it is doing, and the most lines and bytes
    # one upstream batch may hold. None is the provider's own limit (OpenAI 50,000 lines and
    # 200 MB per file, Anthropic 100,000 requests and 256 MB); a setting above it is
    # lowered to it.
    native_batch_poll_interval_s: float = Field(default=30.0, gt=0)
    native_batch_chunk_lines: int | None = Field(default=None, ge=1)
    native_batch_chunk_bytes: int | None = Field(default=None, ge=1024)
