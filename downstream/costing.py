"""COSTING: monthly cost before and after each change, and the totals.

Money is computed with ``Decimal`` from the catalog's decimal strings; each
resource's monthly cost is rounded half-up to cents and the totals are the sums of
those rounded amounts, so the rows add up to the totals as on an invoice.

Per action: ``create`` costs nothing before, ``delete`` nothing after, ``no-op``
the same on both sides, ``update``/``replace`` price their before and after
attributes, ``forget`` keeps its cost (the object keeps running, Terraform just
stops managing it). An unpriced resource counts 0 on both sides, is marked
``priced: false`` and is counted in ``unpriced_count``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from downstream.errors import InvalidStageInput
from downstream.store import content_hash

CENT = Decimal("0.01")


def cost_resources(resources: list[Any]) -> dict[str, Any]:
    """The COSTING output (without ``faults``) for ENRICHING's ``resources``."""
    rows = [_cost_row(resource, i) for i, resource in enumerate(resources)]
    before = sum((_cents(row["_before"]) for row in rows), Decimal(0))
    after = sum((_cents(row["_after"]) for row in rows), Decimal(0))
    result: dict[str, Any] = {
        "currency": "USD",
        "monthly_cost_before": money(before),
        "monthly_cost_after": money(after),
        "monthly_cost_delta": money(after - before),
        "resources": [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows],
        "unpriced_count": sum(1 for row in rows if not row["priced"]),
    }
    result["result_reference"] = "result-" + content_hash(result)[:32]
    return result


def _cost_row(resource: Any, index: int) -> dict[str, Any]:
    """One resource's costs; the ``_before``/``_after`` keys keep exact Decimals."""
    where = f"input.resources[{index}]"
    if not isinstance(resource, dict) or not isinstance(resource.get("pricing"), dict):
        raise InvalidStageInput(f"{where} has no 'pricing' object: COSTING expects "
                                "ENRICHING's output")
    pricing = resource["pricing"]
    priced = pricing.get("priced") is True
    action = resource.get("action")
    before = after = Decimal(0)
    if priced:
        before, after = _side_costs(pricing.get("components"), where)
        if action == "no-op":
            before = after = after if resource.get("after") is not None else before
        elif action == "forget":
            after = before
    return {
        "address": resource.get("address"),
        "type": resource.get("type"),
        "action": action,
        "monthly_cost_before": money(before),
        "monthly_cost_after": money(after),
        "monthly_cost_delta": money(_cents(after) - _cents(before)),
        "priced": priced,
        "unpriced_reason": pricing.get("unpriced_reason"),
        "_before": before,
        "_after": after,
    }


def _side_costs(components: Any, where: str) -> tuple[Decimal, Decimal]:
    """Sum of unit price x quantity for each side over a resource's components."""
    if not isinstance(components, list):
        raise InvalidStageInput(f"{where}.pricing.components must be a list")
    before = after = Decimal(0)
    for n, component in enumerate(components):
        try:
            unit_price = Decimal(str(component["unit_price"]))
            before += unit_price * Decimal(str(component["quantity_before"]))
            after += unit_price * Decimal(str(component["quantity_after"]))
        except (KeyError, TypeError, ArithmeticError) as exc:
            raise InvalidStageInput(
                f"{where}.pricing.components[{n}] needs numeric unit_price, quantity_before "
                f"and quantity_after ({exc!r})"
            ) from None
    return before, after


def _cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def money(value: Decimal) -> float:
    """Dollars rounded half-up to cents, as a JSON number."""
    return float(_cents(value))
