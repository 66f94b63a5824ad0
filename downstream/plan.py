"""PARSING: validate a ``terraform show -json`` plan and normalise its resource changes.

Reads format_version 0.x and 1.x (Terraform 0.12 onwards; terraform-json accepts
">= 0.1, < 2.0" likewise) and rejects 2.x, since a major bump is breaking. Every
problem is a :class:`MalformedPlan` whose message says what is wrong and where.
"""

from __future__ import annotations

import re
from typing import Any

from downstream.attributes import pricing_view
from downstream.errors import MalformedPlan
from downstream.region import RegionResolver

_FORMAT_RE = re.compile(r"^(\d+)\.(\d+)$")
SUPPORTED_MAJORS = (0, 1)

# Terraform's action lists, normalised. A replacement is two actions in either order;
# "forget" (TF >= 1.7) removes an object from state without destroying it.
ACTIONS: dict[tuple[str, ...], str] = {
    ("no-op",): "no-op",
    ("create",): "create",
    ("read",): "read",
    ("update",): "update",
    ("delete",): "delete",
    ("delete", "create"): "replace",
    ("create", "delete"): "replace",
    ("forget",): "forget",
    ("create", "forget"): "replace",
}
_KNOWN_WORDS = {word for actions in ACTIONS for word in actions}


def parse_plan(plan: Any) -> dict[str, Any]:
    """``format_version``, ``terraform_version``, ``resources`` and ``warnings`` of a plan.

    ``resources`` holds one entry per managed resource change (data sources skipped).
    """
    if not isinstance(plan, dict):
        raise MalformedPlan(
            f"plan is not a Terraform plan: the document is a {type(plan).__name__}, "
            "not a JSON object"
        )
    format_version = check_format_version(plan)
    changes = _resource_changes(plan)
    resolver = RegionResolver(plan)
    resources = [
        normalise_change(change, resolver)
        for index, change in enumerate(changes)
        if _validated(change, index) == "managed"
    ]
    return {
        "format_version": format_version,
        "terraform_version": plan.get("terraform_version"),
        "resources": resources,
        "warnings": plan_warnings(plan),
    }


def check_format_version(plan: dict[str, Any]) -> str:
    """The plan's ``format_version`` if this parser supports it; else MalformedPlan."""
    if "format_version" not in plan:
        if "values" in plan:
            raise MalformedPlan(
                "plan is not a Terraform plan: missing format_version "
                "(it looks like the 'values' part of a state file)"
            )
        raise MalformedPlan("plan is not a Terraform plan: missing format_version")
    version = plan["format_version"]
    match = _FORMAT_RE.match(version) if isinstance(version, str) else None
    if match is None:
        raise MalformedPlan(
            f"format_version must be a string like \"1.2\", got {version!r}"
        )
    if int(match.group(1)) not in SUPPORTED_MAJORS:
        raise MalformedPlan(
            f"format_version {version!r} is not supported: this service reads plan "
            "format 0.x and 1.x (a new major version is a breaking change)"
        )
    if "values" in plan and not any(
        key in plan for key in ("resource_changes", "planned_values", "configuration")
    ):
        raise MalformedPlan(
            "plan is not a Terraform plan: it is a state (it has 'values' and no "
            "'resource_changes', 'planned_values' or 'configuration'); "
            "run `terraform show -json` on a plan file"
        )
    return version


def plan_warnings(plan: dict[str, Any]) -> list[str]:
    """Warnings about partial plans (``errored`` true or ``complete`` false)."""
    warnings = []
    if plan.get("errored") is True:
        warnings.append("plan is partial: Terraform reports errored=true")
    if plan.get("complete") is False:
        warnings.append("plan is partial: Terraform reports complete=false")
    return warnings


def _resource_changes(plan: dict[str, Any]) -> list[Any]:
    """The ``resource_changes`` list; absent means no changes (Terraform omits it)."""
    changes = plan.get("resource_changes")
    if changes is None:
        return []
    if not isinstance(changes, list):
        raise MalformedPlan(
            f"resource_changes must be a list, got {_json_type(changes)}"
        )
    return changes


def _validated(change: Any, index: int) -> str:
    """Check one resource change's structure and return its mode."""
    where = f"resource_changes[{index}]"
    if not isinstance(change, dict):
        raise MalformedPlan(f"{where} must be an object, got {_json_type(change)}")
    for key in ("address", "type"):
        if not isinstance(change.get(key), str) or not change[key]:
            raise MalformedPlan(f"{where}.{key} is missing or not a non-empty string")
    at = f" (resource {change['address']})"
    mode = change.get("mode", "managed")
    if mode not in ("managed", "data"):
        raise MalformedPlan(f"{where}.mode: unknown mode {mode!r}{at}")
    if "index" in change and not _valid_index(change["index"]):
        raise MalformedPlan(f"{where}.index must be an integer or a string{at}")
    body = change.get("change")
    if not isinstance(body, dict):
        raise MalformedPlan(f"{where}.change is missing or not an object{at}")
    _check_actions(body.get("actions"), f"{where}.change.actions", at)
    for side in ("before", "after"):
        if body.get(side) is not None and not isinstance(body[side], dict):
            raise MalformedPlan(f"{where}.change.{side} must be an object or null{at}")
    return str(mode)


def _check_actions(actions: Any, where: str, at: str) -> None:
    """Raise MalformedPlan unless ``actions`` is one of Terraform's action lists."""
    if actions is None:
        raise MalformedPlan(f"{where} is missing{at}")
    if not isinstance(actions, list) or not actions:
        raise MalformedPlan(f"{where} must be a non-empty list, got {actions!r}{at}")
    for word in actions:
        if not isinstance(word, str) or word not in _KNOWN_WORDS:
            hint = (
                "; Terraform spells a replacement [\"delete\", \"create\"] or "
                "[\"create\", \"delete\"]" if word == "replace" else ""
            )
            raise MalformedPlan(f"{where}: unknown action {word!r}{at}{hint}")
    if tuple(actions) not in ACTIONS:
        raise MalformedPlan(f"{where}: unsupported combination of actions {actions!r}{at}")


def normalise_change(change: dict[str, Any], resolver: RegionResolver) -> dict[str, Any]:
    """The PARSING view of one managed resource change."""
    body = change["change"]
    before, _ = pricing_view(change["type"], body.get("before"), {})
    after, unknown = pricing_view(change["type"], body.get("after"), body.get("after_unknown"))
    region, region_source = resolver.resolve(change)
    return {
        "address": change["address"],
        "module_address": change.get("module_address") or None,
        "type": change["type"],
        "name": change.get("name"),
        "index": change.get("index"),
        "provider": normalise_provider(change.get("provider_name")),
        "action": ACTIONS[tuple(body["actions"])],
        "raw_actions": list(body["actions"]),
        "action_reason": change.get("action_reason"),
        "deposed": change.get("deposed"),
        "before": before,
        "after": after,
        "unknown_attributes": unknown,
        "region": region,
        "region_source": region_source,
    }


def normalise_provider(provider_name: Any) -> str | None:
    """Full provider source address; TF 0.12's short ``aws`` becomes the registry one."""
    if not isinstance(provider_name, str) or not provider_name:
        return None
    parts = provider_name.split("/")
    if len(parts) == 1:
        return f"registry.terraform.io/hashicorp/{provider_name.split('.')[0]}"
    if len(parts) == 2:
        return f"registry.terraform.io/{provider_name}"
    return provider_name


def _valid_index(index: Any) -> bool:
    return isinstance(index, str) or (isinstance(index, int) and not isinstance(index, bool))


def _json_type(value: Any) -> str:
    """JSON's name for a Python value's type, for error messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
