"""Which attributes price a resource type, and how to pick them out of a change.

PARSING keeps only these attributes of ``before``/``after``: a plan carries secrets in
plain text (passwords, keys), and cost needs only a handful of fields. Values still
unknown at plan time (``after_unknown``) become :data:`UNKNOWN` and their paths are
listed, so later stages can say "cost unknown" rather than guess.
"""

from __future__ import annotations

from typing import Any

UNKNOWN = "(known after apply)"

BLOCK_DEVICE = ("volume_type", "volume_size", "iops", "throughput")

# attribute -> None for a plain value, or the keys kept in each block of a nested list.
PRICING_ATTRIBUTES: dict[str, dict[str, tuple[str, ...] | None]] = {
    "aws_instance": {
        "instance_type": None,
        "tenancy": None,
        "root_block_device": BLOCK_DEVICE,
        "ebs_block_device": BLOCK_DEVICE,
    },
    "aws_ebs_volume": {"type": None, "size": None, "iops": None, "throughput": None},
    "aws_db_instance": {
        "engine": None,
        "instance_class": None,
        "allocated_storage": None,
        "storage_type": None,
        "iops": None,
        "multi_az": None,
    },
    "aws_nat_gateway": {"connectivity_type": None},
    "aws_lb": {"load_balancer_type": None},
    "aws_alb": {"load_balancer_type": None},
    "aws_elb": {},
    "aws_s3_bucket": {},
    "aws_lambda_function": {"memory_size": None, "architectures": None},
    "google_compute_instance": {"machine_type": None, "zone": None},
    "google_compute_disk": {"type": None, "size": None, "zone": None},
}


def pricing_view(
    resource_type: str, values: Any, unknown: Any
) -> tuple[dict[str, Any] | None, list[str]]:
    """The pricing attributes of ``values`` plus the paths of those unknown until apply.

    ``values`` is a change's ``before`` or ``after`` (None when the object does not
    exist on that side); ``unknown`` is the matching ``after_unknown`` (``{}`` for
    ``before``). Unknown leaves are reported as :data:`UNKNOWN`.
    """
    if not isinstance(values, dict):
        return None, []
    spec = PRICING_ATTRIBUTES.get(resource_type, {})
    unknown_map = unknown if isinstance(unknown, dict) else {}
    view: dict[str, Any] = {}
    unknown_paths: list[str] = []
    for key, block_keys in spec.items():
        if unknown_map.get(key) is True:
            view[key] = UNKNOWN
            unknown_paths.append(key)
        elif key in values and block_keys is None:
            view[key] = values[key]
        elif key in values and block_keys is not None:
            view[key] = _blocks_view(key, values[key], unknown_map.get(key), block_keys,
                                     unknown_paths)
    return view, unknown_paths


def _blocks_view(
    key: str,
    blocks: Any,
    unknown: Any,
    block_keys: tuple[str, ...],
    unknown_paths: list[str],
) -> list[dict[str, Any]] | None:
    """Keep ``block_keys`` of each block in a nested-block list like ``root_block_device``."""
    if not isinstance(blocks, list):
        return None
    unknown_list = unknown if isinstance(unknown, list) else []
    kept: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            continue
        block_unknown = unknown_list[i] if i < len(unknown_list) else {}
        if not isinstance(block_unknown, dict):
            block_unknown = {}
        entry: dict[str, Any] = {}
        for sub in block_keys:
            if block_unknown.get(sub) is True:
                entry[sub] = UNKNOWN
                unknown_paths.append(f"{key}[{i}].{sub}")
            elif sub in block:
                entry[sub] = block[sub]
        kept.append(entry)
    return kept


def location_hint(values: Any) -> str | None:
    """A region read from a resource's own attributes, if it has one.

    ``region`` wins; otherwise an availability zone or zone is cut back to its region
    (``us-east-1a`` -> ``us-east-1``, ``us-central1-a`` -> ``us-central1``).
    """
    if not isinstance(values, dict):
        return None
    region = values.get("region")
    if isinstance(region, str) and region:
        return region
    for key in ("availability_zone", "zone"):
        zone = values.get(key)
        if isinstance(zone, str) and len(zone) > 2:
            return _region_of_zone(zone)
    return None


def _region_of_zone(zone: str) -> str:
    """Region of an AWS availability zone or a GCP zone."""
    if zone[-2] == "-":
        return zone[:-2]
    if zone[-1].isalpha() and zone[-2].isdigit():
        return zone[:-1]
    return zone
