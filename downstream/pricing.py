"""ENRICHING: attach catalog unit prices to each parsed resource change.

Each priceable type has a function that turns one side (``before`` or ``after``) of
a change into cost lines: a named component, its catalog price and its monthly
quantity. The two sides are merged into components carrying ``quantity_before`` and
``quantity_after``, so an instance resized from m5.large to m5.xlarge shows one line
leaving and one arriving. Anything the catalog cannot price makes the resource
``priced: false`` with the reason; it is never an error. Usage-based charges (S3
storage, Lambda requests) have no quantity in a plan: they are listed with quantity 0
and ``usage_based: true``, so the total never pretends to know them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from downstream.attributes import UNKNOWN
from downstream.price_catalog import Price, PriceCatalog

# Types AWS (or a local utility provider) does not charge for by themselves.
FREE_TYPES = frozenset({
    "aws_vpc", "aws_subnet", "aws_route_table", "aws_route_table_association", "aws_route",
    "aws_internet_gateway", "aws_security_group", "aws_security_group_rule",
    "aws_iam_role", "aws_iam_policy", "aws_iam_role_policy", "aws_iam_role_policy_attachment",
    "aws_iam_instance_profile", "aws_iam_user", "aws_iam_user_policy", "aws_lambda_permission",
    "aws_db_subnet_group", "aws_db_parameter_group", "aws_db_option_group",
    "aws_lb_target_group", "aws_lb_listener", "aws_lb_target_group_attachment",
    "aws_s3_bucket_policy", "aws_s3_bucket_public_access_block", "aws_s3_bucket_versioning",
    "aws_volume_attachment", "aws_key_pair",
    "null_resource", "terraform_data", "random_id", "random_string", "random_password",
    "random_pet", "time_sleep",
})


# EBS baselines and tiers the catalog's single prices depend on.
GP3_BASELINE_IOPS = 3000
GP3_BASELINE_MBPS = 125
IO2_FIRST_TIER_IOPS = 32000


class Unpriced(Exception):
    """The catalog cannot price this resource; the message is the reason shown."""


@dataclass
class Line:
    """One cost line of one side: a component, its price and monthly quantity."""

    name: str
    price: Price
    quantity: Decimal
    usage_based: bool = False


@dataclass
class Side:
    """One side (before or after) of a change, with the catalog and notes to add to."""

    values: dict[str, Any]
    catalog: PriceCatalog
    notes: list[str] = field(default_factory=list)

    def known(self, key: str, default: Any = None) -> Any:
        """An attribute's value; Unpriced if it is known only after apply."""
        value = self.values.get(key)
        if value == UNKNOWN:
            raise Unpriced(f"{key} is known only after apply, so the cost is unknown")
        return default if value is None else value

    def price(self, key: str, what: str) -> Price:
        """The catalog price under ``key``; Unpriced naming ``what`` if absent."""
        found = self.catalog.get(key)
        if found is None:
            raise Unpriced(f"no catalog price for {what}")
        return found

    def hours(self) -> Decimal:
        return self.catalog.hours_per_month


def enrich_resource(resource: dict[str, Any], catalog: PriceCatalog) -> dict[str, Any]:
    """The resource plus its ``pricing`` object."""
    notes: list[str] = []
    try:
        components = _components(resource, catalog, notes)
        pricing = {"priced": True, "components": components, "unpriced_reason": None}
    except Unpriced as exc:
        pricing = {"priced": False, "components": [], "unpriced_reason": str(exc)}
    pricing["notes"] = notes
    return {**resource, "pricing": pricing}


def _components(
    resource: dict[str, Any], catalog: PriceCatalog, notes: list[str]
) -> list[dict[str, Any]]:
    """Merged components of both sides; Unpriced when the catalog cannot price it."""
    rtype = resource.get("type")
    if rtype in FREE_TYPES:
        notes.append(f"{rtype} has no charge of its own")
        return []
    provider = str(resource.get("provider") or "")
    if not provider.endswith(catalog.provider.split("/", 1)[1]):
        raise Unpriced(f"provider {provider or '(none)'} is not covered: the catalog has "
                       f"{catalog.provider} prices for {catalog.region} only")
    if resource.get("region") != catalog.region:
        raise Unpriced(f"region {resource.get('region')} is not covered: the catalog has "
                       f"prices for {catalog.region} only")
    pricer = PRICERS.get(str(rtype))
    if pricer is None:
        raise Unpriced(f"resource type {rtype} is not in the catalog")
    before = _side_lines(pricer, resource.get("before"), catalog, notes)
    after = _side_lines(pricer, resource.get("after"), catalog, notes)
    return _merge(before, after)


def _side_lines(
    pricer: Callable[[Side], list[Line]], values: Any, catalog: PriceCatalog, notes: list[str]
) -> list[Line]:
    """Lines of one side, none when the object does not exist on that side."""
    if not isinstance(values, dict):
        return []
    side = Side(values, catalog)
    lines = pricer(side)
    notes.extend(note for note in side.notes if note not in notes)
    return lines


def _merge(before: list[Line], after: list[Line]) -> list[dict[str, Any]]:
    """Components keyed by (name, price): quantities of both sides side by side."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for lines, column in ((before, "quantity_before"), (after, "quantity_after")):
        for line in lines:
            entry = merged.setdefault((line.name, line.price.key), {
                "name": line.name,
                "unit": line.price.unit,
                "unit_price": line.price.as_json_number(),
                "quantity_before": 0,
                "quantity_after": 0,
                "usage_based": line.usage_based,
                "source": line.price.source,
                "price_key": line.price.key,
            })
            entry[column] = _number(Decimal(entry[column]) + line.quantity)
    return list(merged.values())


def _number(value: Decimal) -> int | float:
    """A quantity as a JSON number: an int when whole."""
    return int(value) if value == value.to_integral_value() else float(value)


def _quantity(value: Any, what: str) -> Decimal:
    """A non-negative size or count as Decimal; Unpriced if it is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise Unpriced(f"{what} is {value!r}, not a number the catalog can price")
    return Decimal(str(value))


def _aws_instance(side: Side) -> list[Line]:
    """EC2 on-demand hours (Linux, shared tenancy) plus its block devices."""
    instance_type = side.known("instance_type")
    if instance_type is None:
        raise Unpriced("instance_type is not set")
    tenancy = side.values.get("tenancy") or "default"
    if tenancy == UNKNOWN:
        tenancy = "default"
        side.notes.append("tenancy known only after apply; priced as shared (default) tenancy")
    if tenancy != "default":
        raise Unpriced(f"tenancy {tenancy!r} is not in the catalog (shared tenancy only)")
    price = side.price(f"ec2:{instance_type}", f"EC2 instance type {instance_type}")
    lines = [Line(f"Instance usage (Linux, on-demand, {instance_type})", price, side.hours())]
    for key, label in (("root_block_device", "Root volume"), ("ebs_block_device", "EBS volume")):
        lines += _block_devices(side, key, label)
    return lines


def _block_devices(side: Side, key: str, label: str) -> list[Line]:
    """Storage lines of an instance's root or extra EBS blocks, when their size is known."""
    blocks = side.values.get(key)
    if blocks == UNKNOWN:
        side.notes.append(f"{key} is known only after apply; its storage is not priced")
        return []
    lines: list[Line] = []
    for block in blocks if isinstance(blocks, list) else []:
        if UNKNOWN in (block.get("volume_size"), block.get("volume_type")):
            side.notes.append(f"{key} size or type is known only after apply; not priced")
            continue
        if block.get("volume_size") is None:
            side.notes.append(f"{key} size comes from the AMI; not priced")
            continue
        lines += _ebs_lines(side, block.get("volume_type") or "gp2", block["volume_size"],
                            block.get("iops"), label, block.get("throughput"))
    return lines


def _aws_ebs_volume(side: Side) -> list[Line]:
    """An EBS volume: storage per GB-month, plus provisioned IOPS where priced."""
    size = side.known("size")
    if size is None:
        raise Unpriced("size is not set (a volume from a snapshot takes the snapshot's size)")
    volume_type = side.known("type")
    if volume_type is None:
        volume_type = "gp2"
        side.notes.append("type not set; priced as gp2, the EBS default")
    return _ebs_lines(side, volume_type, size, side.values.get("iops"), "EBS storage",
                      side.values.get("throughput"))


def _ebs_lines(
    side: Side, volume_type: str, size: Any, iops: Any, label: str, throughput: Any = None
) -> list[Line]:
    """Storage lines of one EBS volume, plus provisioned IOPS (io1, io2) and gp3 extras.

    gp3 IOPS and throughput unknown at plan time are AWS's baseline (3,000 and 125 MB/s),
    which the storage price includes; set above it, the part above is priced per
    IOPS-month and MBps-month. io2 IOPS are priced in tiers by AWS; the catalog has the
    first tier only, so more than 32,000 IOPS is unpriced.
    """
    storage = side.price(f"ebs:{volume_type}:storage", f"EBS {volume_type} storage")
    lines = [Line(f"{label} storage ({volume_type})", storage, _quantity(size, "volume size"))]
    if volume_type in ("io1", "io2"):
        if iops == UNKNOWN:
            raise Unpriced(f"iops of the {volume_type} volume is known only after apply")
        if volume_type == "io2" and _over(iops, IO2_FIRST_TIER_IOPS):
            raise Unpriced("no catalog price for io2 IOPS above 32,000 (AWS prices them in tiers)")
        iops_price = side.price(f"ebs:{volume_type}:iops", f"EBS {volume_type} provisioned IOPS")
        lines.append(Line(f"{label} provisioned IOPS ({volume_type})", iops_price,
                          _quantity(iops, "iops")))
    if volume_type == "gp3":
        for value, baseline, key, what in (
            (iops, GP3_BASELINE_IOPS, "iops", "IOPS above 3,000"),
            (throughput, GP3_BASELINE_MBPS, "throughput", "throughput above 125 MB/s"),
        ):
            if _over(value, baseline):
                price = side.price(f"ebs:gp3:{key}", f"gp3 {what}")
                lines.append(Line(f"{label} provisioned {what} (gp3)", price,
                                  _quantity(value, key) - baseline))
    return lines


def _over(value: Any, baseline: int) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > baseline


def _aws_db_instance(side: Side) -> list[Line]:
    """An RDS instance: on-demand hours by engine and class, storage, io1/io2 IOPS.

    gp3 IOPS set above the included baseline have no catalog number: unpriced.
    """
    engine, klass = side.known("engine"), side.known("instance_class")
    if engine is None or klass is None:
        raise Unpriced("engine and instance_class must both be set to price an RDS instance")
    deployment = "multi-az" if side.known("multi_az", False) else "single-az"
    label = "Multi-AZ" if deployment == "multi-az" else "Single-AZ"
    hourly = side.price(f"rds:{engine}:{klass}:{deployment}", f"RDS {engine} {klass} ({label})")
    storage_type = side.known("storage_type")
    if storage_type is None:
        storage_type = "gp2"
        side.notes.append("storage_type not set; priced as gp2")
    storage = side.price(f"rds:storage:{storage_type}:{deployment}",
                         f"RDS {storage_type} storage ({label})")
    size = _quantity(side.known("allocated_storage", 0), "allocated_storage")
    lines = [
        Line(f"Database instance ({engine}, {label}, {klass})", hourly, side.hours()),
        Line(f"Database storage ({storage_type}, {label})", storage, size),
    ]
    iops = side.values.get("iops")
    if storage_type in ("io1", "io2"):
        iops = side.known("iops")
        iops_price = side.price(f"rds:iops:{storage_type}:{deployment}",
                                f"RDS {storage_type} provisioned IOPS ({label})")
        lines.append(Line(f"Provisioned IOPS ({storage_type}, {label})", iops_price,
                          _quantity(iops, "iops")))
    if storage_type == "gp3" and _over(iops, _rds_gp3_baseline_iops(engine, size)):
        raise Unpriced("no catalog price for RDS gp3 IOPS above the included baseline")
    return lines


def _rds_gp3_baseline_iops(engine: str, size: Decimal) -> int:
    """IOPS included with RDS gp3: 12,000 from 400 GB (3,000 below, and always for Oracle,
    whose threshold differs: counted low, so a larger Oracle volume is left unpriced)."""
    return 12000 if size >= 400 and not str(engine).startswith("oracle") else 3000


def _aws_nat_gateway(side: Side) -> list[Line]:
    """A NAT gateway: hourly, plus data processed (usage-based)."""
    return [
        Line("NAT gateway", side.price("nat:hour", "NAT gateway hours"), side.hours()),
        Line("NAT gateway data processed", side.price("nat:data", "NAT gateway data"),
             Decimal(0), usage_based=True),
    ]


def _aws_lb(side: Side) -> list[Line]:
    """An ELBv2 load balancer: hourly by type, plus LCUs (usage-based)."""
    lb_type = side.known("load_balancer_type", "application")
    hourly = side.price(f"lb:{lb_type}:hour", f"the {lb_type} load balancer hourly charge")
    lcu = side.price(f"lb:{lb_type}:lcu", f"{lb_type} load balancer capacity units")
    return [
        Line(f"Load balancer ({lb_type})", hourly, side.hours()),
        Line("Load balancer capacity units", lcu, Decimal(0), usage_based=True),
    ]


def _aws_elb(side: Side) -> list[Line]:
    """A Classic Load Balancer: the catalog has no number for it."""
    return [Line("Classic load balancer", side.price("lb:classic:hour",
                 "the Classic Load Balancer hourly charge"), side.hours())]


def _aws_s3_bucket(side: Side) -> list[Line]:
    """An S3 bucket: storage and requests, all usage-based."""
    return [
        Line("S3 Standard storage", side.price("s3:standard:storage", "S3 Standard storage"),
             Decimal(0), usage_based=True),
        Line("S3 PUT, COPY, POST, LIST requests", side.price("s3:standard:put", "S3 PUT requests"),
             Decimal(0), usage_based=True),
        Line("S3 GET, SELECT requests", side.price("s3:standard:get", "S3 GET requests"),
             Decimal(0), usage_based=True),
    ]


def _aws_lambda_function(side: Side) -> list[Line]:
    """A Lambda function: requests and duration, both usage-based."""
    architectures = side.values.get("architectures")
    arch = architectures[0] if isinstance(architectures, list) and architectures else "x86_64"
    if architectures == UNKNOWN:
        side.notes.append("architectures known only after apply; duration priced as x86_64")
    memory = side.values.get("memory_size")
    size = f", {memory} MB" if isinstance(memory, int) else ""
    return [
        Line("Lambda requests", side.price("lambda:requests", "Lambda requests"), Decimal(0),
             usage_based=True),
        Line(f"Lambda duration ({arch}{size})",
             side.price(f"lambda:{arch}:duration", f"Lambda {arch} duration"), Decimal(0),
             usage_based=True),
    ]


PRICERS: dict[str, Callable[[Side], list[Line]]] = {
    "aws_instance": _aws_instance,
    "aws_ebs_volume": _aws_ebs_volume,
    "aws_db_instance": _aws_db_instance,
    "aws_nat_gateway": _aws_nat_gateway,
    "aws_lb": _aws_lb,
    "aws_alb": _aws_lb,
    "aws_elb": _aws_elb,
    "aws_s3_bucket": _aws_s3_bucket,
    "aws_lambda_function": _aws_lambda_function,
}
