"""The ``make demo`` scenario through the gateway: features in, a signed model out, released with four eyes.

Each stage prints what happened with numbers; any failure ends the run with a non-zero exit.
The scenario grows with each capability up to the closed loop (ROADMAP.md).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlp_cli.client import ApiError, PlatformClient
from mlp_cli.demo import client_secret, fetch_token
from mlp_cli.topology import GATEWAY

console = Console()
PROJECT = "default"
FS = f"/api/v1/feature-store/projects/{PROJECT}"
REG = "/api/v1/registry"

DEFINITIONS = """
entities:
  - name: customer
    join_keys: [{name: customer_id, dtype: string}]
    description: A retail banking customer
feature_views:
  - name: customer_activity
    entities: [customer]
    ttl_seconds: 2592000
    owner: risk-team
    tags: {domain: churn}
    residency_region: uae
    features:
      - {name: tenure_months, dtype: int64, description: Months since account opening}
      - {name: monthly_spend, dtype: float64}
      - {name: support_calls_30d, dtype: int64}
      - {name: email, dtype: string, pii: true}
    expectations:
      - {kind: range, feature: monthly_spend, min: 0}
      - {kind: not_null, feature: tenure_months}
feature_services:
  - name: churn_model_v1
    features: [customer_activity:tenure_months, customer_activity:monthly_spend, customer_activity:support_calls_30d]
"""


@dataclass
class Stage:
    """One line of the final summary."""

    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class Scenario:
    """Runs the stages in order; stops at the first failure."""

    state_dir: Path
    issuer: str
    seed: int = 7
    customers: int = 5000
    stages: list[Stage] = field(default_factory=list)

    def token(self, client_id: str) -> str:
        """A client-credentials token from the platform's issuer."""
        return fetch_token(self.issuer, client_id, client_secret(self.state_dir, client_id))

    def stage(self, name: str, fn: Callable[[], str]) -> None:
        """Run one stage, print its outcome, record it."""
        console.rule(f"[bold]{name}")
        started = time.perf_counter()
        try:
            detail = fn()
            ok = True
        except (ApiError, AssertionError, KeyError) as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
        seconds = time.perf_counter() - started
        self.stages.append(Stage(name, ok, detail, seconds))
        console.print(("[green]✔[/] " if ok else "[red]✘[/] ") + escape(detail))
        if not ok:
            raise SystemExit(1)

    def run(self) -> bool:
        """The whole scenario; prints a summary table."""
        base = GATEWAY.base_url
        self.scientist = PlatformClient(base, self.token("mlp-demo"))
        self.approver = PlatformClient(base, self.token("mlp-approver"))
        self.outsider = PlatformClient(base, self.token("mlp-other-tenant"))
        try:
            self.stage("1. define features (plan + apply)", self.define_features)
            self.stage("2. ingest a seeded dataset (Parquet, quality checked)", self.ingest)
            self.stage("3. materialize to the online store", self.materialize)
            self.stage("4. online features (hot path)", self.online)
            self.stage("5. point-in-time training set", self.historical)
            self.stage("6. tenancy and PII are enforced", self.access_rules)
            self.stage("7. register a signed, encrypted model version", self.register)
            self.stage("8. release to production with four eyes", self.release)
            self.stage("9. gRPC through the gateway", self.grpc_calls)
            self.stage("10. the audit trail verifies", self.audit)
        except SystemExit:
            pass
        finally:
            for c in (self.scientist, self.approver, self.outsider):
                c.close()
        self.summary()
        return all(s.ok for s in self.stages) and len(self.stages) == 10

    # ---------------------------------------------------------------- feature store
    def define_features(self) -> str:
        headers = {"content-type": "application/yaml"}
        plan = self.scientist.post(f"{FS}/plan", content=DEFINITIONS, headers=headers)["changes"]
        for change in plan:
            console.print(f"  plan: {change['action']:<8} {change.get('kind', '')} {change.get('name', '')}")
        applied = self.scientist.post(f"{FS}/apply", content=DEFINITIONS, headers=headers)["changes"]
        again = self.scientist.post(f"{FS}/plan", content=DEFINITIONS, headers=headers)["changes"]
        changed = [c for c in again if c["action"] not in ("unchanged", "noop", "none")]
        assert not changed, f"re-planning the same file should change nothing, got {changed}"
        return f"{len(applied)} definitions applied; re-plan shows no change"

    def _dataset(self) -> pa.Table:
        import random

        rng = random.Random(self.seed)
        now = datetime.now(UTC)
        ids, ts, tenure, spend, calls, emails = [], [], [], [], [], []
        for i in range(self.customers):
            for days_ago in (20, 2):  # two snapshots per customer
                ids.append(f"c{i:05d}")
                ts.append(now - timedelta(days=days_ago, minutes=rng.randint(0, 600)))
                tenure.append(rng.randint(1, 120))
                spend.append(round(rng.lognormvariate(5, 0.6), 2))
                calls.append(rng.randint(0, 8))
                emails.append(f"customer{i}@example.ae")
        # a few rows that break the expectations: quarantined, never half-written
        for j in range(5):
            spend[j] = -1.0
        return pa.table({"customer_id": ids, "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                         "tenure_months": tenure, "monthly_spend": spend, "support_calls_30d": calls,
                         "email": emails})

    def ingest(self) -> str:
        table = self._dataset()
        buf = io.BytesIO()
        pq.write_table(table, buf)
        result = self.scientist.post(f"{FS}/feature-views/customer_activity/files", params={"format": "parquet"},
                                     content=buf.getvalue())
        assert result["rows_written"] + result["rows_quarantined"] == table.num_rows
        assert result["rows_quarantined"] == 5, result
        bad = self.scientist.status_of("POST", f"{FS}/feature-views/customer_activity/files",
                                       params={"format": "parquet"}, content=b"not a parquet file")
        assert bad == 422, f"a malformed file must be refused with 422, got {bad}"
        return (f"{table.num_rows:,} rows in ({buf.getbuffer().nbytes / 1e6:.1f} MB Parquet): "
                f"{result['rows_written']:,} written, {result['rows_quarantined']} quarantined "
                f"(monthly_spend < 0); malformed file refused with 422")

    def materialize(self) -> str:
        now = datetime.now(UTC)
        window = {"start": (now - timedelta(days=30)).isoformat(), "end": now.isoformat()}
        run = self.scientist.post(f"{FS}/feature-views/customer_activity/materialize", json=window)
        # customers whose every row was quarantined have nothing to serve
        assert self.customers - 5 <= run["entities_written"] <= self.customers, run
        rerun = self.scientist.post(f"{FS}/feature-views/customer_activity/materialize", json=window)
        return (f"run {run['id'][:8]} ({run['mode']}): {run['rows_read']:,} offline rows → "
                f"{run['entities_written']:,} entities online; rerun of the same range is safe "
                f"({rerun['entities_written']:,} entities, values unchanged)")

    def online(self) -> str:
        body = {"feature_service": "churn_model_v1", "entities": {"customer_id": ["c00010", "c00011", "nobody"]}}
        started = time.perf_counter()
        result = self.scientist.post(f"{FS}/online-features", json=body)
        ms = (time.perf_counter() - started) * 1000
        feats = result["features"]
        table = Table("feature", "c00010", "c00011", "nobody")
        for name, col in feats.items():
            table.add_row(name, *[f"{v} ({s})" for v, s in zip(col["values"], col["statuses"], strict=True)])
        console.print(table)
        statuses = next(iter(feats.values()))["statuses"]
        assert statuses[0].upper() == "PRESENT" and statuses[2].upper() != "PRESENT", statuses
        return f"3 entities x {len(feats)} features in {ms:.1f} ms through the gateway; unknown entity → {statuses[2]}"

    def historical(self) -> str:
        now = datetime.now(UTC)
        n = 1000
        entities = {"customer_id": [f"c{i % self.customers:05d}" for i in range(n)] + ["nobody"],
                    "event_timestamp": [(now - timedelta(days=10)).isoformat()] * (n // 2)
                    + [now.isoformat()] * (n - n // 2) + [now.isoformat()]}
        resp = self.scientist.request("POST", f"{FS}/historical-features",
                                      json={"feature_service": "churn_model_v1", "entities": entities})
        table = ipc.open_stream(resp.content).read_all()
        assert table.num_rows == n + 1, f"one output row per input row: {table.num_rows} != {n + 1}"
        nulls = table.column("customer_activity__monthly_spend").null_count if \
            "customer_activity__monthly_spend" in table.column_names else None
        return (f"{n + 1} entity rows in → {table.num_rows} rows out, columns {table.column_names}; "
                f"rows with no value in range come back as nulls ({nulls})")

    def access_rules(self) -> str:
        other = self.outsider.status_of("GET", f"{FS}/feature-views/customer_activity")
        assert other == 404, f"another tenant must get 404, got {other}"
        pii = self.scientist.status_of("POST", f"{FS}/online-features", json={
            "features": ["customer_activity:email"], "entities": {"customer_id": ["c00010"]}})
        assert pii == 403, f"PII without features:read-pii must be 403, got {pii}"
        return "other tenant → 404 (no existence leak); PII feature without features:read-pii → 403"

    # ---------------------------------------------------------------- registry
    def register(self) -> str:
        model_bytes = os.urandom(2 * 1024 * 1024) + b"DEMO-MODEL-WEIGHTS"
        digest = hashlib.sha256(model_bytes).hexdigest()
        name = f"churn-{datetime.now(UTC):%H%M%S}"
        self.model, self.model_sha256 = name, digest
        self.scientist.post(f"{REG}/projects/{PROJECT}/models",
                            json={"name": name, "description": "Churn classifier",
                                  "thresholds": {"auc": {"min": 0.75}}})
        draft = self.scientist.post(f"{REG}/projects/{PROJECT}/models/{name}/versions", json={
            "files": [{"path": "model.onnx", "size": len(model_bytes), "sha256": digest}],
            "metrics": {"auc": 0.83}, "params": {"hidden": 64}, "attributes": {"onnx_parity": {"passed": True}},
            "lineage": {"training_run": "demo-run-1", "data_quality_passed": True,
                        "feature_views": ["customer_activity"], "feature_service": "churn_model_v1"}})
        upload = f"{REG}/uploads/{draft['uploads'][0]['id']}"
        # the first request is cut short: the server keeps only whole encrypted segments
        cut = self.scientist.request("PUT", upload, content=model_bytes[: 3 * 2**19],
                                     headers={"Upload-Offset": "0"}).json()
        offset = int(self.scientist.request("GET", upload).headers["Upload-Offset"])
        assert offset == cut["offset"] < 3 * 2**19
        rest = (model_bytes[i:i + 2**16] for i in range(offset, len(model_bytes), 2**16))  # streamed
        done = self.scientist.request("PUT", upload, content=rest, headers={"Upload-Offset": str(offset)}).json()
        assert done["state"] == "complete", done
        version = self.scientist.post(f"{REG}/projects/{PROJECT}/models/{name}/versions/{draft['version']['version']}/commit")
        self.version = version["version"]
        back = self.scientist.request("GET", f"{REG}/projects/{PROJECT}/models/{name}/versions/{self.version}"
                                      "/files/model.onnx").content
        assert back == model_bytes, "the verified download must equal the upload"
        return (f"{name} v{self.version}: upload cut at 1.5 MiB resumed from byte {offset:,}; "
                f"{len(model_bytes) / 2**20:.1f} MiB encrypted at rest, manifest "
                f"{version['manifest_digest'][:23]}… signed (DSSE/Ed25519); verified download matches")

    def release(self) -> str:
        path = f"{REG}/projects/{PROJECT}/models/{self.model}"
        direct = self.scientist.status_of("PUT", f"{path}/aliases/production", json={"version": self.version})
        assert direct == 409, f"production moves only through a change request, got {direct}"
        cr = self.scientist.post(f"{path}/change-requests", json={
            "alias": "production", "version": self.version, "reason": "first churn model"})
        checks = ", ".join(f"{c['name']}={'pass' if c['passed'] else 'FAIL'}" for c in cr["checks"])
        self_approve = self.scientist.status_of("POST", f"{REG}/change-requests/{cr['id']}/approve", json={})
        assert self_approve == 403, f"the requester must not approve, got {self_approve}"
        self.approver.post(f"{REG}/change-requests/{cr['id']}/approve", json={"comment": "looks good"})
        applied = self.scientist.post(f"{REG}/change-requests/{cr['id']}/apply")
        aliases = self.scientist.get(f"{path}/aliases")
        prod = [a for a in aliases if a["name"] == "production"]
        assert prod and prod[0]["version"] == self.version, aliases
        return (f"change request {cr['id'][:8]}: checks [{checks}]; self-approval → 403; approved by "
                f"mlp-approver; {applied['state']}: production → v{self.version}")

    def grpc_calls(self) -> str:
        import hashlib

        import grpc

        from mlp_protos.mlp.common.v1 import value_pb2
        from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as fs_pb
        from mlp_protos.mlp.featurestore.v1 import featurestore_pb2_grpc as fs_grpc
        from mlp_protos.mlp.registry.v1 import registry_pb2 as reg_pb
        from mlp_protos.mlp.registry.v1 import registry_pb2_grpc as reg_grpc

        def md(client: PlatformClient) -> list[tuple[str, str]]:
            return [("authorization", str(client.http.headers["authorization"]))]

        with grpc.insecure_channel(f"127.0.0.1:{GATEWAY.grpc_port}") as channel:
            features = fs_grpc.FeatureStoreServiceStub(channel)
            request = fs_pb.GetOnlineFeaturesRequest(
                project=PROJECT, feature_service="churn_model_v1",
                entities={"customer_id": value_pb2.RepeatedValue(values=[value_pb2.Value(string_val="c00010")])})
            reply = features.GetOnlineFeatures(request, metadata=md(self.scientist), timeout=10)
            present = sum(1 for c in reply.columns if c.statuses and c.statuses[0] == fs_pb.FEATURE_STATUS_PRESENT)
            codes = {}
            for label, metadata in (("other tenant", md(self.outsider)), ("no token", [])):
                try:
                    features.GetOnlineFeatures(request, metadata=metadata, timeout=10)
                    codes[label] = "OK"
                except grpc.RpcError as exc:
                    codes[label] = exc.code().name
            assert codes == {"other tenant": "NOT_FOUND", "no token": "UNAUTHENTICATED"}, codes
            registry = reg_grpc.RegistryServiceStub(channel)
            stream = registry.DownloadArtifact(reg_pb.DownloadArtifactRequest(
                project=PROJECT, model=self.model, alias="production"), metadata=md(self.scientist), timeout=30)
            digest, size = hashlib.sha256(), 0
            for part in stream:
                if part.WhichOneof("part") == "chunk":
                    digest.update(part.chunk.data)
                    size += len(part.chunk.data)
        assert digest.hexdigest() == self.model_sha256, "the gRPC download must equal the uploaded model"
        return (f"GetOnlineFeatures on :{GATEWAY.grpc_port}: {present} columns PRESENT (key + 3 features); other tenant → "
                f"{codes['other tenant']}, no token → {codes['no token']}; DownloadArtifact of production: "
                f"{size / 2**20:.1f} MiB streamed and verified, sha256 {digest.hexdigest()[:12]}…")

    def audit(self) -> str:
        from mlp_cli.audit import PUBLIC_KEY_FILE, default_database_url, load_public_key, verify_chain

        key = self.state_dir / PUBLIC_KEY_FILE
        report = verify_chain(default_database_url(self.state_dir), load_public_key(key) if key.exists() else None)
        assert report.ok, report.problems[:5]
        assert report.records > 0, "mutating and refused calls must be audited"
        return (f"{report.records} hash-chained audit records (mutations and refusals, no tokens), "
                f"{report.checkpoints} signed checkpoints; `mlp audit verify` finds the chain intact")

    def summary(self) -> None:
        table = Table(title="MLP demo scenario")
        for col in ("stage", "result", "seconds"):
            table.add_column(col)
        for s in self.stages:
            table.add_row(s.name, "[green]ok[/]" if s.ok else "[red]failed[/]", f"{s.seconds:.2f}")
        console.print(table)
