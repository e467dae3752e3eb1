"""Policy checks that decide whether a change request may move an alias.

Rules, in one place:

* A **promotion** (the target never held the alias) must pass every check: the manifest signature
  verifies, every evaluation metric meets the model's thresholds, the ONNX parity check recorded
  by training passed (version attribute ``onnx_parity.passed``), and the training set passed
  data quality (lineage ``data_quality_passed``). One approval by a holder of ``registry:approve``
  who is not the requester (four eyes) is needed.
* A **rollback** (the target held this alias before and is still registered) is fast-tracked:
  only the signature check blocks (the others are recorded for information), and one approval by
  a holder of ``registry:approve`` suffices, which may be the requester (the on-call engineer
  restoring service). Every rollback is audited as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from mlp_registry.domain.models import ChangeKind, CheckResult, Model, ModelVersion

SIGNATURE = "signature"
METRICS = "metrics"
ONNX_PARITY = "onnx_parity"
DATA_QUALITY = "data_quality"


@dataclass(frozen=True)
class ReleasePolicy:
    """Which aliases are protected and how long a change request lives."""

    protected_aliases: frozenset[str] = frozenset({"production"})
    change_request_ttl: timedelta = timedelta(days=7)
    required_checks: frozenset[str] = frozenset({SIGNATURE, METRICS, ONNX_PARITY, DATA_QUALITY})

    def is_protected(self, alias: str) -> bool:
        """Whether moving ``alias`` needs a change request."""
        return alias in self.protected_aliases

    def self_approval_allowed(self, kind: ChangeKind) -> bool:
        """Four eyes for promotions; the on-call may approve their own rollback."""
        return kind is ChangeKind.ROLLBACK

    def evaluate(self, model: Model, version: ModelVersion, signature_error: str | None,
                 kind: ChangeKind) -> list[CheckResult]:
        """Run every check; which ones block depends on the kind of change."""
        def blocking(name: str) -> bool:
            return name in self.required_checks and (kind is ChangeKind.PROMOTION or name == SIGNATURE)

        return [
            CheckResult(SIGNATURE, signature_error is None, blocking(SIGNATURE),
                        signature_error or "manifest signature and digests verify"),
            _metrics(model, version, blocking(METRICS)),
            _onnx_parity(version, blocking(ONNX_PARITY)),
            _data_quality(version, blocking(DATA_QUALITY)),
        ]


def failing(checks: list[CheckResult]) -> list[CheckResult]:
    """The blocking checks that did not pass."""
    return [c for c in checks if c.blocking and not c.passed]


def _metrics(model: Model, version: ModelVersion, blocking: bool) -> CheckResult:
    if not model.thresholds:
        return CheckResult(METRICS, True, blocking, "the model defines no metric thresholds")
    problems = []
    for metric, bounds in sorted(model.thresholds.items()):
        value = version.metrics.get(metric)
        if value is None:
            problems.append(f"{metric} missing")
            continue
        if "min" in bounds and value < bounds["min"]:
            problems.append(f"{metric}={value:g} < min {bounds['min']:g}")
        if "max" in bounds and value > bounds["max"]:
            problems.append(f"{metric}={value:g} > max {bounds['max']:g}")
    if problems:
        return CheckResult(METRICS, False, blocking, "; ".join(problems))
    return CheckResult(METRICS, True, blocking, "all metrics meet the model's thresholds")


def _onnx_parity(version: ModelVersion, blocking: bool) -> CheckResult:
    parity = version.attributes.get("onnx_parity")
    if isinstance(parity, dict) and parity.get("passed") is True:
        return CheckResult(ONNX_PARITY, True, blocking, "ONNX parity check passed")
    if parity is None:
        return CheckResult(ONNX_PARITY, False, blocking, "no ONNX parity result recorded (attribute onnx_parity)")
    return CheckResult(ONNX_PARITY, False, blocking, "ONNX parity check did not pass")


def _data_quality(version: ModelVersion, blocking: bool) -> CheckResult:
    passed = version.lineage.data_quality_passed
    if passed is True:
        return CheckResult(DATA_QUALITY, True, blocking, "training set passed data quality")
    if passed is None:
        return CheckResult(DATA_QUALITY, False, blocking, "no data-quality result in the version's lineage")
    return CheckResult(DATA_QUALITY, False, blocking, "training set failed data quality")
