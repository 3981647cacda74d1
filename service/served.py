"""Which targets the deployed bundle(s) serve, for ``GET /targets`` and the check in ``POST /segment``.

Torch-free. Where the answer comes from:

- **embedded mode**: the API's own bundle, from its manifest (``model.bundle.manifest``); a
  manifest that cannot be read leaves the answer unknown (the worker thread reports the problem
  on ``/readyz`` and fails the job with it, as before);
- **RQ mode**: the bundles that live workers publish (``worker.contracts.bundle_info_key``; each
  entry carries ``served_targets`` and ``unserved_reasons``). With several live bundles a target is
  served only when *every* one serves it, since any worker may take the job. No live worker has
  published yet: unknown, and ``POST /segment`` answers 503 when ``require_worker_bundle`` is set
  (``LATENTSEG_REQUIRE_WORKER_BUNDLE=1``), else it queues the job for the workers to come.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.bundle.manifest import demo_bundle_path, read_manifest
from service.deps import Services

__all__ = ["ServedTargets", "served_targets", "unserved_problem"]


@dataclass(frozen=True)
class ServedTargets:
    """``served`` is None when no bundle is known (``why_unknown`` says why)."""

    served: frozenset[str] | None
    reasons: Mapping[str, str] = field(default_factory=dict)  # target -> why it is not served
    bundles: tuple[Mapping[str, Any], ...] = ()
    why_unknown: str | None = None

    def reason(self, name: str) -> str | None:
        """Why ``name`` is not served (None when it is, or when nothing is known)."""
        if self.served is None or name in self.served:
            return None
        return self.reasons.get(name) or "not trained by the deployed bundle"


def _from_entries(entries: Sequence[Mapping[str, Any]]) -> ServedTargets:
    served: set[str] | None = None
    reasons: dict[str, str] = {}
    for entry in entries:
        names = {n for n in str(entry.get("served_targets", "")).split(",") if n}
        label = f"{entry.get('name')} {entry.get('version')}"
        try:
            for name, why in json.loads(str(entry.get("unserved_reasons") or "{}")).items():
                reasons.setdefault(str(name), f"{label}: {why}")
        except json.JSONDecodeError:
            pass
        served = names if served is None else served & names
    return ServedTargets(frozenset(served or ()), reasons, tuple(entries))


def bundle_entry(manifest: Any) -> dict[str, str]:
    """What a bundle publishes about its targets (the same keys a worker adds to its bundle info)."""
    unserved = {t: manifest.unserved_reason(t) for t in manifest.trained_targets if t not in manifest.served_targets}
    return {
        "name": str(manifest.name),
        "version": str(manifest.version),
        "served_targets": ",".join(manifest.served_targets),
        "unserved_reasons": json.dumps(unserved, sort_keys=True),
    }


def served_targets(services: Services) -> ServedTargets:
    """The served targets of the deployment right now (see the module docstring)."""
    settings = services.settings
    if settings.embedded:
        try:
            manifest = read_manifest(settings.bundle if settings.bundle is not None else demo_bundle_path())
        except Exception as exc:  # BundleError, OSError: the worker thread reports it in words
            return ServedTargets(None, why_unknown=f"the bundle could not be read: {' '.join(str(exc).split())}")
        return _from_entries([bundle_entry(manifest)])
    readiness = services.queue.readiness()
    published = [b for b in readiness.bundles if "served_targets" in b]
    if not published:
        if readiness.problems and readiness.problems[0].startswith("redis unreachable"):
            return ServedTargets(None, why_unknown=readiness.problems[0])
        return ServedTargets(None, why_unknown=f"no worker has published a bundle on queue {settings.queue!r} yet")
    return _from_entries(published)


def unserved_problem(state: ServedTargets, names: Sequence[str]) -> str | None:
    """The 422 message for requested ``names`` the deployment does not serve (None: all served or unknown)."""
    if state.served is None:
        return None
    refused = [n for n in names if n not in state.served]
    if not refused:
        return None
    why = "; ".join(f"{n}: {state.reason(n)}" for n in refused)
    served = ", ".join(sorted(state.served)) or "none"
    return f"not served by the deployed model: {why}. Served targets: {served}"
