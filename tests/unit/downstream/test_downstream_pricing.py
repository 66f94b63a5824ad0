"""ENRICHING and COSTING: catalog prices, unpriced reasons, totals by hand."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from downstream.costing import cost_resources
from downstream.plan import parse_plan
from downstream.price_catalog import catalog_from_json, load_catalog
from downstream.pricing import enrich_resource
from downstream.samples import load_sample

CATALOG = load_catalog()


def enriched(sample: str) -> list[dict[str, Any]]:
    return [enrich_resource(r, CATALOG) for r in parse_plan(load_sample(sample))["resources"]]


def rows(result: dict[str, Any]) -> dict[str, tuple[float, float, bool]]:
    return {r["address"]: (r["monthly_cost_before"], r["monthly_cost_after"], r["priced"])
            for r in result["resources"]}


@pytest.mark.parametrize("key, price, unit", [
    ("ec2:t3.medium", "0.0416", "hour"),
    ("ec2:m5.xlarge", "0.192", "hour"),
    ("ebs:gp3:storage", "0.08", "GB-month"),
    ("ebs:io1:iops", "0.065", "IOPS-month"),
    ("rds:mysql:db.t3.micro:single-az", "0.017", "hour"),
    ("nat:hour", "0.045", "hour"),
    ("lb:application:hour", "0.0225", "hour"),
    ("lambda:requests", "0.20", "1M requests"),
    ("ec2:t3.nano", "0.0052", "hour"),
    ("ec2:m5.8xlarge", "1.536", "hour"),
    ("ec2:c5.4xlarge", "0.68", "hour"),
    ("ec2:r5.large", "0.126", "hour"),
    ("ec2:r5.4xlarge", "1.008", "hour"),
    ("ebs:io2:storage", "0.125", "GB-month"),
    ("ebs:io2:iops", "0.065", "IOPS-month"),
    ("ebs:gp3:iops", "0.005", "IOPS-month"),
    ("ebs:gp3:throughput", "0.04", "MBps-month"),
    ("rds:postgres:db.t3.large:single-az", "0.145", "hour"),
    ("rds:mysql:db.t3.large:multi-az", "0.272", "hour"),
    ("rds:storage:gp3:single-az", "0.115", "GB-month"),
    ("rds:iops:io1:single-az", "0.10", "IOPS-month"),
    ("lb:network:hour", "0.0225", "hour"),
    ("lb:classic:hour", "0.025", "hour"),
])
def test_catalog_prices(key: str, price: str, unit: str) -> None:
    entry = CATALOG.get(key)
    assert entry is not None
    assert (entry.unit_price, entry.unit) == (Decimal(price), unit)
    assert entry.source.endswith(")") or "derived" in entry.source


def test_new_entries_cite_the_file_and_commit_they_were_read_at() -> None:
    r5 = CATALOG.get("ec2:r5.large")
    io2 = CATALOG.get("ebs:io2:storage")
    postgres = CATALOG.get("rds:postgres:db.t3.large:single-az")
    assert r5 is not None and io2 is not None and postgres is not None
    assert "zz_generated.pricing_aws.go" in r5.source
    assert "031e72b6099630e960dacb88b48a7e9bb780945f" in r5.source
    assert "2026-01-19" in r5.source
    assert "ebs_volume_test.golden" in io2.source and "derived from 30 GB = $3.75" in io2.source
    assert "db_instance_test.golden" in postgres.source
    assert "derived from 730 h = $105.85" in postgres.source


def test_catalog_has_no_invented_numbers() -> None:
    for absent in ("rds:postgres:db.t3.medium:single-az", "rds:mysql:db.t3.medium:single-az",
                   "rds:postgres:db.t3.micro:single-az", "rds:postgres:db.m5.large:single-az",
                   "rds:postgres:db.t3.large:multi-az", "rds:iops:io1:multi-az",
                   "ec2:r5.8xlarge", "ec2:t3a.micro"):
        assert CATALOG.get(absent) is None
    assert CATALOG.describe() == {"name": "aws_us_east_1", "currency": "USD",
                                  "region": "us-east-1", "hours_per_month": 730,
                                  "provider": "registry.terraform.io/hashicorp/aws"}


def test_catalog_entry_without_source_is_rejected() -> None:
    raw = {"provider": "p/q", "region": "r", "currency": "USD", "hours_per_month": 730,
           "sources": {}, "prices": {"x": {"price": "1", "unit": "hour", "source": "nope",
                                           "date": "2026-01-01"}}}
    with pytest.raises(ValueError, match="catalog entry 'x' is invalid"):
        catalog_from_json(raw, "bad")


def test_update_prices_both_instance_types_as_separate_components() -> None:
    app = {r["address"]: r for r in enriched("resize-instance")}["aws_instance.app"]
    lines = {c["name"]: c for c in app["pricing"]["components"]}

    old = lines["Instance usage (Linux, on-demand, m5.large)"]
    new = lines["Instance usage (Linux, on-demand, m5.xlarge)"]
    assert (old["unit_price"], old["quantity_before"], old["quantity_after"]) == (0.096, 730, 0)
    assert (new["unit_price"], new["quantity_before"], new["quantity_after"]) == (0.192, 0, 730)
    assert "karpenter" in new["source"] and "2026-07-20" in new["source"]


def test_usage_based_components_are_zero_quantity_and_say_so() -> None:
    resources = {r["address"]: r for r in enriched("web-stack")}
    for address in ("aws_s3_bucket.assets", "aws_lambda_function.thumbnailer"):
        pricing = resources[address]["pricing"]
        assert pricing["priced"] is True
        assert all(c["usage_based"] and c["quantity_after"] == 0 for c in pricing["components"])
    duration = resources["aws_lambda_function.thumbnailer"]["pricing"]["components"][1]
    assert (duration["name"], duration["unit_price"]) == (
        "Lambda duration (arm64, 512 MB)", 0.0000133334)


@pytest.mark.parametrize("sample, address, reason", [
    ("web-stack", "aws_eip.nat", "resource type aws_eip is not in the catalog"),
    ("teardown", "aws_instance.canary",
     "instance_type is known only after apply, so the cost is unknown"),
    ("teardown", "aws_s3_bucket.replica",
     "region us-west-2 is not covered: the catalog has prices for us-east-1 only"),
])
def test_unpriced_resources_have_a_reason(sample: str, address: str, reason: str) -> None:
    pricing = {r["address"]: r for r in enriched(sample)}[address]["pricing"]
    assert pricing == {"priced": False, "components": [], "unpriced_reason": reason,
                       "notes": []}


def test_an_rds_class_the_catalog_lacks_is_unpriced_and_says_which() -> None:
    resource = {"address": "aws_db_instance.x", "type": "aws_db_instance",
                "provider": "registry.terraform.io/hashicorp/aws", "region": "us-east-1",
                "action": "create", "before": None,
                "after": {"engine": "postgres", "instance_class": "db.t3.medium",
                          "allocated_storage": 50, "storage_type": "gp3", "multi_az": False}}
    pricing = enrich_resource(resource, CATALOG)["pricing"]
    assert (pricing["priced"], pricing["unpriced_reason"]) == (
        False, "no catalog price for RDS postgres db.t3.medium (Single-AZ)")


def test_other_providers_are_unpriced_not_errors() -> None:
    resource = {"address": "google_compute_instance.vm", "type": "google_compute_instance",
                "provider": "registry.terraform.io/hashicorp/google", "region": "europe-west1",
                "action": "create", "before": None, "after": {"machine_type": "e2-small"}}
    pricing = enrich_resource(resource, CATALOG)["pricing"]
    assert pricing["priced"] is False
    assert pricing["unpriced_reason"].startswith(
        "provider registry.terraform.io/hashicorp/google is not covered")


def test_web_stack_costs() -> None:
    # 2 x (t3.medium 0.0416 x 730 + 20 GB gp3 x 0.08) = 2 x 31.97; NAT 0.045 x 730 = 32.85;
    # ALB 0.0225 x 730 = 16.425 -> 16.43; RDS postgres db.t3.large 0.145 x 730 = 105.85 +
    # 50 GB gp3 x 0.115 = 5.75. Only the EIP is unpriced.
    result = cost_resources(enriched("web-stack"))
    assert (result["monthly_cost_before"], result["monthly_cost_after"],
            result["monthly_cost_delta"], result["unpriced_count"]) == (0.0, 224.82, 224.82, 1)
    table = rows(result)
    assert table["module.web.aws_instance.web[0]"] == (0.0, 31.97, True)
    assert table["aws_nat_gateway.main"] == (0.0, 32.85, True)
    assert table["aws_lb.app"] == (0.0, 16.43, True)
    assert table["aws_db_instance.main"] == (0.0, 111.6, True)
    assert table["aws_eip.nat"] == (0.0, 0.0, False)
    assert result["currency"] == "USD" and result["result_reference"].startswith("result-")
    assert len(result["resources"]) == 14


def test_resize_costs() -> None:
    # m5.large 70.08 + 30 GB gp3 2.40 -> m5.xlarge 140.16 + 2.40; 200 GB gp2 20.00 -> gp3 16.00;
    # the no-op NAT gateway 32.85 on both sides.
    result = cost_resources(enriched("resize-instance"))
    assert (result["monthly_cost_before"], result["monthly_cost_after"],
            result["monthly_cost_delta"], result["unpriced_count"]) == (125.33, 191.41, 66.08, 0)
    table = rows(result)
    assert table["aws_instance.app"] == (72.48, 142.56, True)
    assert table["aws_ebs_volume.data"] == (20.0, 16.0, True)
    assert table["aws_nat_gateway.egress"] == (32.85, 32.85, True)
    assert table["aws_security_group.app"] == (0.0, 0.0, True)


def test_teardown_costs() -> None:
    # delete t3.small 15.184 + 8 GB gp2 0.80 = 15.98; delete RDS mysql db.t3.micro 12.41 +
    # 20 GB 2.30 = 14.71; replace c5.large 62.05 + 16 GB gp2 1.60 = 63.65 on both sides;
    # replace 100 GB gp2 10.00 -> 100 GB io1 12.50 + 1000 IOPS 65.00 = 77.50.
    result = cost_resources(enriched("teardown"))
    assert (result["monthly_cost_before"], result["monthly_cost_after"],
            result["monthly_cost_delta"], result["unpriced_count"]) == (104.34, 141.15, 36.81, 2)
    table = rows(result)
    assert table['aws_instance.legacy["batch"]'] == (15.98, 0.0, True)
    assert table["module.reporting.module.db.aws_db_instance.reports"] == (14.71, 0.0, True)
    assert table["aws_instance.worker"] == (63.65, 63.65, True)
    assert table["aws_ebs_volume.scratch"] == (10.0, 77.5, True)


def test_result_reference_is_deterministic() -> None:
    assert (cost_resources(enriched("teardown"))["result_reference"]
            == cost_resources(enriched("teardown"))["result_reference"])


def test_forget_keeps_its_cost_and_rounding_is_half_up() -> None:
    forgotten = {"address": "aws_nat_gateway.n", "type": "aws_nat_gateway", "action": "forget",
                 "pricing": {"priced": True, "unpriced_reason": None, "components": [
                     {"unit_price": 0.0225, "quantity_before": 730, "quantity_after": 0}]}}
    row = cost_resources([forgotten])["resources"][0]
    assert (row["monthly_cost_before"], row["monthly_cost_after"]) == (16.43, 16.43)


def created(rtype: str, after: dict[str, Any]) -> dict[str, Any]:
    """A resource created in us-east-1 by the AWS provider, as PARSING gives it."""
    return {"address": f"{rtype}.x", "type": rtype, "action": "create",
            "provider": "registry.terraform.io/hashicorp/aws", "region": "us-east-1",
            "before": None, "after": after}


def monthly(rtype: str, after: dict[str, Any]) -> tuple[float, bool]:
    row = cost_resources([enrich_resource(created(rtype, after), CATALOG)])["resources"][0]
    return row["monthly_cost_after"], row["priced"]


@pytest.mark.parametrize("rtype, after, cost", [
    # r5.large 0.126 x 730 = 91.98 + 50 GB gp3 x 0.08 = 4.00
    ("aws_instance", {"instance_type": "r5.large",
                      "root_block_device": [{"volume_size": 50, "volume_type": "gp3"}]}, 95.98),
    # io2 100 GB x 0.125 = 12.50 + 2,000 IOPS x 0.065 = 130.00
    ("aws_ebs_volume", {"type": "io2", "size": 100, "iops": 2000}, 142.5),
    # gp3 40 GB x 0.08 = 3.20 + (4,000 - 3,000) IOPS x 0.005 = 5.00 + (130 - 125) MBps x 0.04
    # = 0.20: Infracost's golden shows the same three lines.
    ("aws_ebs_volume", {"type": "gp3", "size": 40, "iops": 4000, "throughput": 130}, 8.4),
    # postgres db.t3.large 0.145 x 730 = 105.85 + 100 GB gp3 x 0.115 = 11.50
    ("aws_db_instance", {"engine": "postgres", "instance_class": "db.t3.large",
                         "allocated_storage": 100, "storage_type": "gp3", "multi_az": False,
                         "iops": 3000}, 117.35),
    # 400 GB gp3 includes 12,000 IOPS: 105.85 + 400 x 0.115 = 46.00
    ("aws_db_instance", {"engine": "postgres", "instance_class": "db.t3.large",
                         "allocated_storage": 400, "storage_type": "gp3", "iops": 12000},
     151.85),
    # mysql db.t3.large 99.28 + io1 100 GB x 0.125 = 12.50 + 1,200 IOPS x 0.10 = 120.00
    ("aws_db_instance", {"engine": "mysql", "instance_class": "db.t3.large",
                         "allocated_storage": 100, "storage_type": "io1", "iops": 1200},
     231.78),
    # Multi-AZ mysql db.t3.large 0.272 x 730 = 198.56 + 30 GB gp2 x 0.23 = 6.90
    ("aws_db_instance", {"engine": "mysql", "instance_class": "db.t3.large",
                         "allocated_storage": 30, "storage_type": "gp2", "multi_az": True},
     205.46),
    # NLB 0.0225 x 730 = 16.425 -> 16.43; Classic 0.025 x 730 = 18.25
    ("aws_lb", {"load_balancer_type": "network"}, 16.43),
    ("aws_elb", {}, 18.25),
])
def test_new_catalog_entries_price_by_hand(rtype: str, after: dict[str, Any],
                                           cost: float) -> None:
    assert monthly(rtype, after) == (cost, True)


@pytest.mark.parametrize("rtype, after, reason", [
    ("aws_ebs_volume", {"type": "io2", "size": 100, "iops": 40000},
     "no catalog price for io2 IOPS above 32,000 (AWS prices them in tiers)"),
    ("aws_db_instance", {"engine": "postgres", "instance_class": "db.t3.large",
                         "allocated_storage": 20, "storage_type": "gp3", "iops": 4000},
     "no catalog price for RDS gp3 IOPS above the included baseline"),
    ("aws_db_instance", {"engine": "postgres", "instance_class": "db.t3.large",
                         "allocated_storage": 100, "storage_type": "io1", "iops": 1000,
                         "multi_az": True},
     "no catalog price for RDS postgres db.t3.large (Multi-AZ)"),
])
def test_what_the_catalog_cannot_price_stays_unpriced(rtype: str, after: dict[str, Any],
                                                      reason: str) -> None:
    pricing = enrich_resource(created(rtype, after), CATALOG)["pricing"]
    assert (pricing["priced"], pricing["unpriced_reason"]) == (False, reason)
