"""Checking a key change (`PATCH /v1/admin/keys/{id}`) and the CLI's IP list options
before anything is stored."""

from __future__ import annotations

import pytest

from broker.errors import AccessNotApproved, ConfigError, InvalidRequest
from broker.stores.access_lists import describe_ip_lists, key_access_changes
from sluice.keys_cli import cidrs_option


def test_a_change_is_normalised_and_leaves_other_fields() -> None:
    fields: dict[str, object] = {"role": "analyst", "ip_allow": ["10.1.2.3", "10.0.0.0/8"],
                                 "ip_deny": [], "alert_thresholds_pct": [50]}
    changes = key_access_changes(fields, current_role="member", scope=None)
    assert changes == {"role": "analyst", "ip_allow": ["10.1.2.3/32", "10.0.0.0/8"],
                       "ip_deny": None}
    assert fields == {"alert_thresholds_pct": [50]}  # for the alert rule to take


def test_a_tenant_admin_never_grants_or_touches_admin() -> None:
    assert key_access_changes({"role": "tenant_admin"}, current_role="member",
                              scope="acme") == {"role": "tenant_admin"}
    with pytest.raises(AccessNotApproved) as granted:
        key_access_changes({"role": "admin"}, current_role="member", scope="acme")
    assert granted.value.code == "insufficient_role"
    with pytest.raises(AccessNotApproved):
        key_access_changes({"ip_deny": None}, current_role="admin", scope="acme")
    assert key_access_changes({"role": "admin"}, current_role="member",
                              scope=None) == {"role": "admin"}


@pytest.mark.parametrize(("fields", "param"), [
    ({"role": None}, "role"), ({"role": "owner"}, "role"),
    ({"ip_deny": ["192.0.2.1", "not-an-address"]}, "ip_deny"),
])
def test_bad_changes_name_their_field(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        key_access_changes(fields, current_role="member", scope=None)
    assert refused.value.param == param


def test_cli_ip_options() -> None:
    assert cidrs_option(" 10.0.0.0/8, 192.0.2.1,10.0.0.0/8", "--ip-allow") == (
        "10.0.0.0/8", "192.0.2.1/32")
    assert cidrs_option(None, "--ip-allow") is None
    with pytest.raises(ConfigError, match=r"--ip-deny: '10\.0\.0\.300/8' is not"):
        cidrs_option("10.0.0.300/8", "--ip-deny")
    assert describe_ip_lists(["10.0.0.0/8"], None) == "allow 10.0.0.0/8"
    assert describe_ip_lists(None, ["192.0.2.1/32"]) == "deny 192.0.2.1/32"
    assert describe_ip_lists(None, []) == "-"
