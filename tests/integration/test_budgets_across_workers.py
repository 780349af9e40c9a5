"""Three worker processes share one budget: the provider never sees it overspent."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.settings import KafkaSettings
from sluice.budget_bench import BudgetRun, measure_budget

pytestmark = pytest.mark.integration

R, T = 60, 3000  # per 10-second window; a request is ~31 tokens, so requests bind


async def test_three_workers_use_the_budget_without_a_single_429(
    kafka_settings: KafkaSettings, database_url: str, tmp_path: Path
) -> None:
    run = BudgetRun(rpm=R, tpm=T, provider_rpm=R, provider_tpm=T, windows=3)
    figures = await measure_budget(run, kafka_settings, database_url, tmp_path)
    print(figures)
    assert figures["rate_limited_total"] == 0
    assert figures["utilisation"] >= 0.90


async def test_a_budget_twice_too_high_converges_on_the_real_limit(
    kafka_settings: KafkaSettings, database_url: str, tmp_path: Path
) -> None:
    run = BudgetRun(rpm=2 * R, tpm=2 * T, provider_rpm=R, provider_tpm=T, windows=3)
    figures = await measure_budget(run, kafka_settings, database_url, tmp_path)
    print(figures)
    assert sum(figures["rate_limited_per_window"][2:]) == 0  # quiet after two windows
    assert figures["served_per_window"][-1] >= 0.85 * R
