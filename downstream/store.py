"""Content-addressed storage of Terraform plans on the local filesystem.

A plan is stored under ``<data_dir>/plans/plan-<hash>.json`` where ``<hash>`` is a prefix
of the sha256 of its canonical JSON, so storing the same plan twice (a retried
PLANNING) yields the same reference and rewrites nothing. Writes go through a
temporary file and ``os.replace``, so a reader never sees half a plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from downstream.errors import BadRequest, InvalidStageInput, MalformedPlan, NotFound

HASH_CHARS = 32
REFERENCE_RE = re.compile(rf"^plan-[0-9a-f]{{{HASH_CHARS}}}$")


def canonical_bytes(document: Any) -> bytes:
    """Stable serialisation: the same document always hashes the same way."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def content_hash(document: Any) -> str:
    """Full hex sha256 of a document's canonical JSON."""
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


class PlanStore:
    """Save and load plans by reference under one data directory."""

    def __init__(self, data_dir: str) -> None:
        self.root = Path(data_dir) / "plans"

    def save(self, plan: dict[str, Any]) -> str:
        """Store ``plan`` (idempotently) and return its ``plan-<hash>`` reference."""
        data = canonical_bytes(plan)
        reference = "plan-" + hashlib.sha256(data).hexdigest()[:HASH_CHARS]
        target = self.root / f"{reference}.json"
        if target.exists():
            return reference
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return reference

    def load(self, reference: Any) -> Any:
        """The stored plan for ``reference``; 422 for a bad reference, 404 if unknown."""
        if not isinstance(reference, str) or not REFERENCE_RE.match(reference):
            raise InvalidStageInput(
                f"input.plan_reference must look like 'plan-<{HASH_CHARS} hex digits>' "
                f"(PLANNING's output), got {reference!r}"
            )
        try:
            data = (self.root / f"{reference}.json").read_bytes()
        except FileNotFoundError:
            raise NotFound(
                f"plan_reference {reference!r} is not stored by this service; "
                "run PLANNING again (or point every stage at the same DOWNSTREAM_DATA_DIR)"
            ) from None
        return json.loads(data)


def read_plan_file(path: Any, max_bytes: int) -> dict[str, Any]:
    """Read a ``terraform show -json`` file given as ``input.plan_path``.

    Handles UTF-8 (with or without BOM) and UTF-16 with a BOM, which is what
    PowerShell's redirection writes on Windows.
    """
    if not isinstance(path, str) or not path:
        raise BadRequest("input.plan_path must be a non-empty string")
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise BadRequest(
                f"input.plan_path {path!r} is {size} bytes, over the {max_bytes}-byte limit"
            )
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BadRequest(f"input.plan_path {path!r} cannot be read: {exc.strerror}") from None
    return parse_plan_bytes(raw, f"input.plan_path {path!r}")


def parse_plan_bytes(raw: bytes, where: str) -> dict[str, Any]:
    """Decode and parse plan bytes into a JSON object, or raise ``MalformedPlan``."""
    try:
        document = json.loads(_decode(raw))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPlan(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedPlan(
            f"{where} is not a Terraform plan: the document is a "
            f"{type(document).__name__}, not a JSON object"
        )
    return document


def _decode(raw: bytes) -> str:
    """Text from bytes, honouring a UTF-8 or UTF-16 byte-order mark."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    return raw.decode("utf-8-sig")
