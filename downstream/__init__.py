"""Reference downstream services for the Terraform cost-estimation pipeline.

The four services the orchestrator calls, one route per stage (``POST /planning``,
``/parsing``, ``/enriching``, ``/costing``), doing real work on real
``terraform show -json`` documents.

Purity rule: this package imports nothing from ``orchestrator``, ``tasks``, ``api``,
``db`` or ``cli``. It is a separate service that shares only the HTTP contract
(``CONTRACT.md``, "Downstream services"), so it can be lifted out, replaced or run
on another machine without the orchestrator's code. It depends on Flask, Werkzeug
and the standard library alone.

Layout: ``config`` (settings from the environment), ``errors`` (the error tree and
its HTTP mapping), ``faults`` (per-job fault injection), ``store`` (content-addressed
plan storage), ``plan``/``attributes``/``region`` (PARSING), ``price_catalog`` and
``pricing`` (ENRICHING), ``costing`` (COSTING), ``stages`` (the four stage
functions), ``app`` (the Flask factory), ``samples`` (the project's own plans).
"""

from __future__ import annotations

from downstream.app import create_app
from downstream.config import DownstreamConfig

__all__ = ["DownstreamConfig", "create_app"]
