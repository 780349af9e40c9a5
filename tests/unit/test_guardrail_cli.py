"""The CLI's guardrail options: `sluice keys create --guardrails`, `sluice bench guardrails`."""

from __future__ import annotations

from sluice.cli import build_parser
from sluice.guardrails_bench import measure_in_process
from sluice.keys_cli import _names


def test_keys_create_takes_a_comma_separated_list_of_policies() -> None:
    args = build_parser().parse_args(["keys", "create", "--tenant", "acme",
                                      "--guardrails", " mask-pii, no-cards,mask-pii,"])
    assert _names(args.guardrails) == ("mask-pii", "no-cards")
    assert _names(None) is None and _names(" , ") is None


def test_bench_guardrails_measures_every_prompt_and_policy_set() -> None:
    args = build_parser().parse_args(["bench", "guardrails", "--no-stack", "--iterations", "20"])
    assert args.no_stack and args.iterations == 20
    figures = measure_in_process(20)
    assert set(figures) == {f"{p}/{s}" for p in ("short", "ticket", "long_8k")
                            for s in ("pii", "injection", "output", "all")}
    assert all(0 < values["p50_us"] <= values["p99_us"] for values in figures.values())
