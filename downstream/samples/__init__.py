"""The project's own sample Terraform plans, in ``terraform show -json`` format 1.2.

- ``web-stack``: a small web stack being created (free VPC pieces, two t3.medium
  instances by ``count`` in module ``web``, an ALB, a PostgreSQL RDS instance, an S3
  bucket, a NAT gateway with its Elastic IP, a Lambda); the region comes from
  ``var.region``.
- ``resize-instance``: in-place updates (m5.large -> m5.xlarge, a gp2 -> gp3 volume)
  beside two ``no-op`` resources.
- ``teardown``: deletes (a ``for_each`` instance, an RDS instance in a nested module),
  a replacement in each order, a deferred data-source read, an instance type known
  only after apply and a bucket on an aliased provider in another region.
- ``malformed``: a plan whose second resource change has no ``change.actions``.

Found through ``importlib.resources``, so they work from an installed package too.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

SAMPLE_NAMES = ("web-stack", "resize-instance", "teardown", "malformed")


def sample_path(name: str) -> Path:
    """The file of sample ``name`` (with or without ``.json``); KeyError if unknown."""
    stem = name.removesuffix(".json")
    if stem not in SAMPLE_NAMES:
        raise KeyError(f"unknown sample plan {name!r}; known: {', '.join(SAMPLE_NAMES)}")
    return Path(str(resources.files(__name__).joinpath(f"{stem}.json")))


def load_sample(name: str) -> dict[str, Any]:
    """Sample ``name`` parsed into a dict (a fresh copy on every call)."""
    document: dict[str, Any] = json.loads(sample_path(name).read_text("utf-8"))
    return document
