"""The unit-price catalog shipped with the package (``catalog/*.json``).

One JSON file per provider and region. Each entry is keyed by a short price key
(``ec2:t3.micro``, ``ebs:gp3:storage``, ``rds:mysql:db.t3.micro:single-az``, ...) and
carries its price as a decimal string, its unit, the id of its source and the source's
date. The file's ``sources`` map gives each id's full public citation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

DEFAULT_CATALOG = "aws_us_east_1"


@dataclass(frozen=True)
class Price:
    """One unit price and where it comes from."""

    key: str
    unit_price: Decimal
    unit: str
    source: str

    def as_json_number(self) -> float:
        """The unit price for a JSON body (exact digits of the catalog's string)."""
        return float(self.unit_price)


@dataclass(frozen=True)
class PriceCatalog:
    """Prices for one provider in one region, loaded once and read-only."""

    name: str
    provider: str
    region: str
    currency: str
    hours_per_month: Decimal
    prices: dict[str, Price]

    def get(self, key: str) -> Price | None:
        """The price under ``key``, or None when the catalog has no such number."""
        return self.prices.get(key)

    def describe(self) -> dict[str, Any]:
        """A short JSON description for stage outputs."""
        return {
            "name": self.name,
            "provider": self.provider,
            "region": self.region,
            "currency": self.currency,
            "hours_per_month": int(self.hours_per_month),
        }


def load_catalog(name: str = DEFAULT_CATALOG) -> PriceCatalog:
    """Read and validate ``downstream/catalog/<name>.json`` from the installed package."""
    text = resources.files("downstream").joinpath("catalog", f"{name}.json").read_text("utf-8")
    return catalog_from_json(json.loads(text), name)


def catalog_from_json(raw: dict[str, Any], name: str) -> PriceCatalog:
    """Build a catalog from its JSON form; ValueError names the first bad entry."""
    sources = raw["sources"]
    prices = {key: _price(key, entry, sources) for key, entry in raw["prices"].items()}
    return PriceCatalog(
        name=name,
        provider=raw["provider"],
        region=raw["region"],
        currency=raw["currency"],
        hours_per_month=Decimal(str(raw["hours_per_month"])),
        prices=prices,
    )


def _price(key: str, entry: dict[str, Any], sources: dict[str, Any]) -> Price:
    """One validated catalog entry with its citation spelled out."""
    try:
        unit_price = Decimal(entry["price"])
        source = sources[entry["source"]]
    except (KeyError, InvalidOperation, TypeError) as exc:
        raise ValueError(f"catalog entry {key!r} is invalid: {exc!r}") from exc
    if not entry.get("date") or not entry.get("unit"):
        raise ValueError(f"catalog entry {key!r} needs a unit and a date")
    citation = f"{source['citation']} ({entry['date']})"
    if entry.get("derived"):
        citation += f"; derived from {entry['derived']}"
    return Price(key=key, unit_price=unit_price, unit=entry["unit"], source=citation)
