"""Resolve the region a resource change lives in, from the plan's configuration.

Terraform plans carry no per-resource region. It comes from the provider block the
resource uses: resource -> ``provider_config_key`` (found in ``configuration``) ->
``configuration.provider_config[key].expressions.region``, which is either a constant
or a reference such as ``var.aws_region`` resolved through the plan's ``variables``.
A key missing from the map (``ec2:aws`` in modules that inherit their provider) falls
back to the root config of that provider. Then the resource's own ``region`` or zone
attribute, then ``us-east-1``, the AWS provider's usual default.
"""

from __future__ import annotations

import re
from typing import Any

from downstream.attributes import location_hint

DEFAULT_REGION = "us-east-1"
_MODULE_STEP = re.compile(r'module\.([^.\[]+)(?:\[(?:"[^"]*"|[^\]]*)\])?')


class RegionResolver:
    """Looks up regions for the resource changes of one plan."""

    def __init__(self, plan: dict[str, Any]) -> None:
        configuration = _obj(plan.get("configuration"))
        self.provider_config = _obj(configuration.get("provider_config"))
        self.root_module = _obj(configuration.get("root_module"))
        self.variables = _obj(plan.get("variables"))

    def resolve(self, change: dict[str, Any]) -> tuple[str, str]:
        """``(region, source)``; source is provider_config, variable, resource or default."""
        for config in self._provider_configs(change):
            found = self._region_of(config)
            if found is not None:
                return found
        body = _obj(change.get("change"))
        hint = location_hint(body.get("after")) or location_hint(body.get("before"))
        if hint is not None:
            return hint, "resource"
        return DEFAULT_REGION, "default"

    def _provider_configs(self, change: dict[str, Any]) -> list[dict[str, Any]]:
        """Candidate provider configs, most specific first."""
        short = _provider_short_name(change.get("provider_name"))
        keys: list[str] = []
        key = self._config_key(change)
        if key:
            keys += [key, key.rsplit(":", 1)[-1]]
        if short:
            keys.append(short)
        seen: list[dict[str, Any]] = []
        for candidate in keys:
            config = self.provider_config.get(candidate)
            if isinstance(config, dict) and config not in seen:
                seen.append(config)
        return seen

    def _config_key(self, change: dict[str, Any]) -> str | None:
        """The ``provider_config_key`` of the resource's block in ``configuration``."""
        module = self.root_module
        for name in module_path(change.get("module_address")):
            call = _obj(_obj(module.get("module_calls")).get(name))
            module = _obj(call.get("module"))
        wanted = f"{change.get('type')}.{change.get('name')}"
        for resource in module.get("resources") or []:
            if isinstance(resource, dict) and resource.get("address") == wanted:
                key = resource.get("provider_config_key")
                return key if isinstance(key, str) else None
        return None

    def _region_of(self, config: dict[str, Any]) -> tuple[str, str] | None:
        """The region a provider config sets, as a constant or a root variable."""
        expression = _obj(_obj(config.get("expressions")).get("region"))
        constant = expression.get("constant_value")
        if isinstance(constant, str) and constant:
            return constant, "provider_config"
        if config.get("module_address"):
            return None  # var.x there names a module input, not a root variable
        for reference in expression.get("references") or []:
            if isinstance(reference, str) and reference.startswith("var."):
                value = _obj(self.variables.get(reference[4:])).get("value")
                if isinstance(value, str) and value:
                    return value, "variable"
        return None


def module_path(module_address: Any) -> list[str]:
    """Module call names of an address: ``module.a[0].module.b["x"]`` -> ``[a, b]``."""
    if not isinstance(module_address, str):
        return []
    return _MODULE_STEP.findall(module_address)


def _provider_short_name(provider_name: Any) -> str | None:
    """``registry.terraform.io/hashicorp/aws`` -> ``aws``; ``aws`` -> ``aws``."""
    if not isinstance(provider_name, str) or not provider_name:
        return None
    return provider_name.rsplit("/", 1)[-1]


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (tolerant reading)."""
    return value if isinstance(value, dict) else {}
