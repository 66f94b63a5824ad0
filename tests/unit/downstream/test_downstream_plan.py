"""PARSING: the parser on the project's sample plans and on hand-made broken ones."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from downstream.attributes import UNKNOWN
from downstream.errors import MalformedPlan
from downstream.plan import normalise_provider, parse_plan
from downstream.samples import SAMPLE_NAMES, load_sample, sample_path


def by_address(parsed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {resource["address"]: resource for resource in parsed["resources"]}


def minimal_plan(*changes: Any, **top: Any) -> dict[str, Any]:
    return {"format_version": "1.2", "terraform_version": "1.9.5",
            "resource_changes": list(changes), **top}


def change(address: str = "aws_instance.a", actions: Any = ("create",), **extra: Any) -> dict:
    return {"address": address, "mode": "managed", "type": "aws_instance", "name": "a",
            "provider_name": "registry.terraform.io/hashicorp/aws",
            "change": {"actions": list(actions), "before": None,
                       "after": {"instance_type": "t3.micro"}, "after_unknown": {}},
            **extra}


def test_every_sample_is_found_through_the_package() -> None:
    for name in SAMPLE_NAMES:
        assert sample_path(name).is_file()
        assert load_sample(name + ".json")["format_version"] == "1.2"
    with pytest.raises(KeyError, match="unknown sample plan"):
        sample_path("nope")


def test_web_stack_creates_with_count_for_each_module_and_region_from_variable() -> None:
    parsed = parse_plan(load_sample("web-stack"))
    resources = by_address(parsed)

    assert parsed["format_version"] == "1.2" and parsed["terraform_version"] == "1.9.5"
    assert {r["action"] for r in parsed["resources"]} == {"create"}
    web = resources["module.web.aws_instance.web[1]"]
    assert (web["module_address"], web["index"], web["name"]) == ("module.web", 1, "web")
    assert web["after"]["instance_type"] == "t3.medium"
    assert web["after"]["root_block_device"] == [
        {"volume_type": "gp3", "volume_size": 20, "iops": UNKNOWN, "throughput": UNKNOWN}]
    assert "root_block_device[0].iops" in web["unknown_attributes"]
    assert web["before"] is None
    subnet = resources['aws_subnet.public["us-east-1b"]']
    assert subnet["index"] == "us-east-1b" and subnet["module_address"] is None
    assert {(r["region"], r["region_source"]) for r in parsed["resources"]} == {
        ("us-east-1", "variable")}


def test_pricing_attributes_only_so_secrets_never_leave_the_parser() -> None:
    db = by_address(parse_plan(load_sample("web-stack")))["aws_db_instance.main"]

    assert db["after"] == {"engine": "postgres", "instance_class": "db.t3.large",
                           "allocated_storage": 50, "storage_type": "gp3",
                           "iops": UNKNOWN, "multi_az": False}
    assert "not-a-real-password" not in repr(db)


def test_resize_has_updates_and_no_ops() -> None:
    resources = by_address(parse_plan(load_sample("resize-instance")))

    app = resources["aws_instance.app"]
    assert app["action"] == "update" and app["raw_actions"] == ["update"]
    assert (app["before"]["instance_type"], app["after"]["instance_type"]) == (
        "m5.large", "m5.xlarge")
    volume = resources["aws_ebs_volume.data"]
    assert (volume["before"]["type"], volume["after"]["type"]) == ("gp2", "gp3")
    assert resources["aws_nat_gateway.egress"]["action"] == "no-op"
    assert resources["aws_instance.app"]["region_source"] == "provider_config"


def test_teardown_replaces_in_both_orders_deletes_reads_and_unknowns() -> None:
    parsed = parse_plan(load_sample("teardown"))
    resources = by_address(parsed)

    assert resources["aws_instance.worker"]["action"] == "replace"
    assert resources["aws_instance.worker"]["raw_actions"] == ["create", "delete"]
    assert resources["aws_ebs_volume.scratch"]["action"] == "replace"
    assert resources["aws_ebs_volume.scratch"]["raw_actions"] == ["delete", "create"]
    legacy = resources['aws_instance.legacy["batch"]']
    assert (legacy["action"], legacy["after"], legacy["index"]) == ("delete", None, "batch")
    nested = resources["module.reporting.module.db.aws_db_instance.reports"]
    assert nested["module_address"] == "module.reporting.module.db"
    canary = resources["aws_instance.canary"]
    assert canary["after"]["instance_type"] == UNKNOWN
    assert "instance_type" in canary["unknown_attributes"]
    assert not any(address.startswith("data.") for address in resources)  # read skipped
    assert resources["aws_s3_bucket.replica"]["region"] == "us-west-2"  # aliased provider


@pytest.mark.parametrize("actions, expected", [
    (["no-op"], "no-op"), (["create"], "create"), (["update"], "update"),
    (["delete"], "delete"), (["delete", "create"], "replace"),
    (["create", "delete"], "replace"), (["forget"], "forget"),
    (["create", "forget"], "replace"),
])
def test_every_action_list_is_normalised(actions: list[str], expected: str) -> None:
    parsed = parse_plan(minimal_plan(change(actions=actions)))
    assert parsed["resources"][0]["action"] == expected
    assert parsed["resources"][0]["raw_actions"] == actions


def test_data_source_read_is_skipped() -> None:
    read = change("data.aws_ami.x", ["read"], mode="data")
    assert parse_plan(minimal_plan(read))["resources"] == []


def test_legacy_provider_name_and_region_from_root_provider_of_a_module() -> None:
    # Given a TF 0.12-style plan: short provider name, module key missing from the map
    legacy = change("module.m.aws_instance.a", module_address="module.m", provider_name="aws")
    plan = minimal_plan(legacy, format_version="0.1", configuration={
        "provider_config": {"aws": {"name": "aws", "expressions": {
            "region": {"constant_value": "eu-west-1"}}}},
        "root_module": {"module_calls": {"m": {"module": {"resources": [
            {"address": "aws_instance.a", "mode": "managed", "type": "aws_instance",
             "name": "a", "provider_config_key": "m:aws"}]}}}}})
    # When parsed
    resource = parse_plan(plan)["resources"][0]
    # Then the provider is the registry address and the region the root provider's
    assert resource["provider"] == "registry.terraform.io/hashicorp/aws"
    assert (resource["region"], resource["region_source"]) == ("eu-west-1", "provider_config")


@pytest.mark.parametrize("raw, expected", [
    ("aws", "registry.terraform.io/hashicorp/aws"),
    ("hashicorp/google", "registry.terraform.io/hashicorp/google"),
    ("registry.terraform.io/hashicorp/aws", "registry.terraform.io/hashicorp/aws"),
    (None, None),
])
def test_normalise_provider(raw: str | None, expected: str | None) -> None:
    assert normalise_provider(raw) == expected


def test_region_falls_back_to_resource_zone_then_default() -> None:
    zoned = change()
    zoned["change"]["after"]["availability_zone"] = "eu-central-1b"
    assert parse_plan(minimal_plan(zoned))["resources"][0]["region"] == "eu-central-1"
    bare = parse_plan(minimal_plan(change()))["resources"][0]
    assert (bare["region"], bare["region_source"]) == ("us-east-1", "default")


def test_no_resource_changes_key_means_no_changes() -> None:
    assert parse_plan({"format_version": "1.2", "planned_values": {}})["resources"] == []


@pytest.mark.parametrize("version", ["0.1", "0.2", "1.0", "1.1", "1.2", "1.9"])
def test_format_versions_zero_and_one_are_accepted(version: str) -> None:
    assert parse_plan(minimal_plan(format_version=version))["format_version"] == version


def test_format_two_is_rejected_with_a_clear_message() -> None:
    with pytest.raises(MalformedPlan) as caught:
        parse_plan(minimal_plan(format_version="2.0"))
    assert caught.value.message == (
        "format_version '2.0' is not supported: this service reads plan format 0.x and 1.x "
        "(a new major version is a breaking change)")


def test_malformed_sample_fails_with_the_exact_message() -> None:
    with pytest.raises(MalformedPlan) as caught:
        parse_plan(load_sample("malformed"))
    assert caught.value.status == 422
    assert caught.value.message == (
        "resource_changes[1].change.actions is missing (resource aws_instance.broken)")


def _without(key: str) -> dict[str, Any]:
    broken = change()
    del broken[key]
    return broken


@pytest.mark.parametrize("plan, message", [
    ([], "plan is not a Terraform plan: the document is a list, not a JSON object"),
    ({"resource_changes": []}, "plan is not a Terraform plan: missing format_version"),
    (minimal_plan(format_version=1.2), "format_version must be a string like \"1.2\", got 1.2"),
    ({"format_version": "1.2", "resource_changes": {}},
     "resource_changes must be a list, got an object"),
    (minimal_plan("x"), "resource_changes[0] must be an object, got a string"),
    (minimal_plan(_without("address")),
     "resource_changes[0].address is missing or not a non-empty string"),
    (minimal_plan(_without("type")),
     "resource_changes[0].type is missing or not a non-empty string"),
    (minimal_plan(change(), change(actions=["explode"])),
     "resource_changes[1].change.actions: unknown action 'explode' (resource aws_instance.a)"),
    (minimal_plan(change(actions=["delete", "update"])),
     "resource_changes[0].change.actions: unsupported combination of actions "
     "['delete', 'update'] (resource aws_instance.a)"),
    (minimal_plan(change(actions=[])),
     "resource_changes[0].change.actions must be a non-empty list, got [] "
     "(resource aws_instance.a)"),
    (minimal_plan(change(index=1.5)),
     "resource_changes[0].index must be an integer or a string (resource aws_instance.a)"),
    (minimal_plan(_without("change")),
     "resource_changes[0].change is missing or not an object (resource aws_instance.a)"),
    ({"format_version": "1.0", "values": {"root_module": {}}},
     "plan is not a Terraform plan: it is a state (it has 'values' and no 'resource_changes', "
     "'planned_values' or 'configuration'); run `terraform show -json` on a plan file"),
])
def test_malformed_plans_say_what_and_where(plan: Any, message: str) -> None:
    with pytest.raises(MalformedPlan) as caught:
        parse_plan(copy.deepcopy(plan))
    assert caught.value.message == message


def test_replace_spelled_as_one_word_is_not_terraform_output() -> None:
    with pytest.raises(MalformedPlan, match="unknown action 'replace'.*spells a replacement"):
        parse_plan(minimal_plan(change(actions=["replace"])))


def test_partial_plan_is_warned_about() -> None:
    assert parse_plan(minimal_plan(complete=False, errored=True))["warnings"] == [
        "plan is partial: Terraform reports errored=true",
        "plan is partial: Terraform reports complete=false"]
