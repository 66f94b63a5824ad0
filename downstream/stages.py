"""The four stage functions: a stage's ``input`` in, its output object out.

Each output becomes the next stage's input verbatim, so every stage copies
``faults`` along (see :mod:`downstream.faults`) and later stages keep what earlier
ones produced. Errors are :class:`~downstream.errors.DownstreamError` subclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from downstream.costing import cost_resources
from downstream.errors import BadRequest, InvalidStageInput
from downstream.plan import parse_plan
from downstream.price_catalog import PriceCatalog
from downstream.pricing import enrich_resource
from downstream.samples import load_sample
from downstream.store import PlanStore, parse_plan_bytes, read_plan_file


@dataclass(frozen=True)
class Services:
    """What the stages work with, built once per app."""

    store: PlanStore
    catalog: PriceCatalog
    max_plan_bytes: int


def planning(stage_input: dict[str, Any], services: Services) -> dict[str, Any]:
    """Store the plan (``plan``, ``plan_path`` or ``sample``) and return its reference.

    Cheap on purpose: the plan is checked to be a JSON object and nothing deeper;
    PARSING does the real validation.
    """
    plan = _plan_from_input(stage_input, services.max_plan_bytes)
    changes = plan.get("resource_changes")
    output = {
        "plan_reference": services.store.save(plan),
        "format_version": plan.get("format_version"),
        "terraform_version": plan.get("terraform_version"),
        "resource_change_count": len(changes) if isinstance(changes, list) else 0,
    }
    return _carry_faults(stage_input, output)


def parsing(stage_input: dict[str, Any], services: Services) -> dict[str, Any]:
    """Load the stored plan and return its normalised managed resource changes."""
    reference = stage_input.get("plan_reference")
    plan = services.store.load(reference)
    parsed = parse_plan(plan)
    return _carry_faults(stage_input, {"plan_reference": reference, **parsed})


def enriching(stage_input: dict[str, Any], services: Services) -> dict[str, Any]:
    """PARSING's output with a ``pricing`` object on every resource."""
    resources = _resources(stage_input, "ENRICHING", "PARSING")
    for index, resource in enumerate(resources):
        if not isinstance(resource, dict):
            raise InvalidStageInput(f"input.resources[{index}] must be an object")
    enriched = [enrich_resource(resource, services.catalog) for resource in resources]
    return {**stage_input, "catalog": services.catalog.describe(), "resources": enriched}


def costing(stage_input: dict[str, Any], services: Services) -> dict[str, Any]:
    """Monthly costs before/after per resource and in total, with ``result_reference``."""
    resources = _resources(stage_input, "COSTING", "ENRICHING")
    result = cost_resources(resources)
    result["plan_reference"] = stage_input.get("plan_reference")
    return _carry_faults(stage_input, result)


STAGE_HANDLERS: dict[str, Callable[[dict[str, Any], Services], dict[str, Any]]] = {
    "PLANNING": planning,
    "PARSING": parsing,
    "ENRICHING": enriching,
    "COSTING": costing,
}


def _plan_from_input(stage_input: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """The plan from ``input.plan``, ``input.plan_path`` or ``input.sample`` (exactly one).

    ``sample`` names one of the bundled sample plans, so a demo can run a job without
    sending the document or sharing a filesystem with this service.
    """
    given = [key for key in ("plan", "plan_path", "sample") if stage_input.get(key) is not None]
    if len(given) != 1:
        raise BadRequest(
            "PLANNING needs exactly one of input.plan (the `terraform show -json` document), "
            "input.plan_path (a file this service can read) and input.sample (a bundled "
            "sample's name)" + (f"; got {', '.join(given)}" if given else "")
        )
    if given[0] == "plan_path":
        return read_plan_file(stage_input["plan_path"], max_bytes)
    if given[0] == "sample":
        return _sample(stage_input["sample"])
    plan = stage_input["plan"]
    if isinstance(plan, str):
        return parse_plan_bytes(plan.encode("utf-8"), "input.plan")
    if not isinstance(plan, dict):
        raise InvalidStageInput(
            f"input.plan is not a Terraform plan: it is a {type(plan).__name__}, "
            "not a JSON object"
        )
    return plan


def _sample(name: Any) -> dict[str, Any]:
    """A bundled sample plan by name, or a 400 listing the names."""
    try:
        return load_sample(str(name))
    except KeyError as exc:
        raise BadRequest(f"input.sample: {exc.args[0]}") from None


def _resources(stage_input: dict[str, Any], stage: str, previous: str) -> list[Any]:
    """``input.resources`` as a list, or a 422 saying which stage's output is expected."""
    resources = stage_input.get("resources")
    if not isinstance(resources, list):
        raise InvalidStageInput(
            f"input.resources is missing or not a list: {stage} expects {previous}'s output"
        )
    return resources


def _carry_faults(stage_input: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
    """``output`` plus the job's ``faults``, so later stages see them too."""
    if "faults" in stage_input:
        output["faults"] = stage_input["faults"]
    return output
