"""The lineage graph around a model version, a feature view or a training set, in either direction.

The registry knows one hop of lineage each way: what a version was made from (recorded at
registration) and, going down, which versions were made from a feature view or training set and
which aliases serve a version. Other services hold the rest of the graph (feature store: sources
of a feature view; serving: predictions), so a client joins their answers to this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlp_core.errors import InvalidArgument
from mlp_registry.domain import validation
from mlp_registry.domain.caller import READ, Caller, require
from mlp_registry.domain.context import RegistryContext, load_model, load_version
from mlp_registry.domain.models import Model, ModelVersion, VersionState
from mlp_registry.store.base import MetadataTx

VISIBLE = frozenset({VersionState.REGISTERED, VersionState.ARCHIVED})
#: Kinds a walk may start from.
START_KINDS = frozenset({"model_version", "feature_view", "dataset"})


@dataclass(frozen=True)
class Node:
    """One object in the graph (the shape of ``mlp.common.v1.ObjectRef``)."""

    project: str
    kind: str
    name: str
    version: str = ""
    digest: str = ""


@dataclass(frozen=True)
class Edge:
    """``source`` was used to make ``target``."""

    source: Node
    target: Node
    relation: str


@dataclass
class LineageGraph:
    """Nodes (start node first) and edges, without duplicates."""

    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def add(self, edge: Edge) -> None:
        """Add an edge and its two nodes."""
        if edge not in self.edges:
            self.edges.append(edge)
        for node in (edge.source, edge.target):
            if node not in self.nodes:
                self.nodes.append(node)


def version_node(model: Model, version: ModelVersion) -> Node:
    """The node of a model version."""
    return Node(model.project, "model_version", model.name, str(version.number))


class LineageQueries:
    """Walks the recorded lineage with tenancy: another project's objects never appear."""

    def __init__(self, ctx: RegistryContext) -> None:
        self.ctx = ctx

    def graph(self, caller: Caller, start: Node, *, upstream: bool, downstream: bool, depth: int = 0,
              ) -> LineageGraph:
        """The graph around ``start``; ``depth`` bounds the hops (0 = everything the registry knows)."""
        require(caller, READ)
        if start.kind not in START_KINDS:
            raise InvalidArgument(f"lineage starts from one of {sorted(START_KINDS)}, not {start.kind!r}")
        if depth < 0:
            raise InvalidArgument("depth must be 0 (unlimited) or positive")
        graph = LineageGraph(nodes=[start])
        with self.ctx.store.transaction() as tx:
            if start.kind == "model_version":
                model, version = self._version(tx, caller, start)
                if upstream:
                    self._sources(graph, model, version)
                if downstream:
                    self._aliases(tx, graph, model, version)
            elif downstream:
                self._consumers(tx, caller, graph, start, hops_left=depth - 1 if depth else -1)
        return graph

    def _version(self, tx: MetadataTx, caller: Caller, start: Node) -> tuple[Model, ModelVersion]:
        try:
            number = int(start.version)
        except ValueError:
            raise InvalidArgument("a model_version node needs its number in `version`, e.g. '3'") from None
        model = load_model(tx, caller, start.project, start.name)
        return model, load_version(tx, model, number, VISIBLE)

    def _sources(self, graph: LineageGraph, model: Model, version: ModelVersion) -> None:
        target, lin, project = version_node(model, version), version.lineage, model.project
        if lin.training_run:
            graph.add(Edge(Node(project, "training_run", lin.training_run), target, "produced"))
        if lin.training_set_digest:
            graph.add(Edge(Node(project, "dataset", lin.training_set_digest, digest=lin.training_set_digest),
                           target, "trained_on"))
        for view in lin.feature_views:
            graph.add(Edge(Node(project, "feature_view", view), target, "trained_on"))
        if lin.feature_service:
            graph.add(Edge(Node(project, "feature_service", lin.feature_service), target, "features_from"))
        if lin.code_version:
            graph.add(Edge(Node(project, "source", lin.code_version), target, "built_from"))

    def _aliases(self, tx: MetadataTx, graph: LineageGraph, model: Model, version: ModelVersion) -> None:
        for alias in tx.aliases_pointing_to(version.id):
            graph.add(Edge(version_node(model, version), Node(model.project, "alias", f"{model.name}:{alias.name}"),
                           "served_as"))

    def _consumers(self, tx: MetadataTx, caller: Caller, graph: LineageGraph, start: Node, hops_left: int,
                   ) -> None:
        validation.name("project", start.project)
        if not caller.can_access(start.project):
            return
        view = start.name if start.kind == "feature_view" else None
        digest = None if view else (start.digest or start.name)
        for model, version in tx.versions_using(view, digest, frozenset({start.project})):
            if model.project != start.project or version.state not in VISIBLE:
                continue
            graph.add(Edge(start, version_node(model, version), "trained_on"))
            if hops_left != 0:
                self._aliases(tx, graph, model, version)
