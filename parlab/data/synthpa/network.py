"""SynthPA's label model: a Bayesian network over PA100k's 26 attributes.

Each node is one visible property of a pedestrian; each of its states sets at
most one attribute. Age, view, sleeve length and lower garment are single
categorical nodes, which makes them exactly one-hot (ShortSleeve/LongSleeve
exact complements) by construction. Edges encode the dependencies that shape
real PA100k labels: gender and age drive clothing and bags, sleeve length
stands for the season (shorts, coats, hats, boots), the view decides what is
visible (glasses and logos are rarely labelled from the back, backpacks are
more often labelled from behind), and bags depend on each other.

The conditional probability tables are data (``pa100k_network.json``),
calibrated on PA100k's train labels by :mod:`parlab.data.synthpa.calibrate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

# PA100k's 26 attributes in evaluation order (the order every parlab table uses).
ATTRIBUTES: tuple[str, ...] = (
    "Hat", "Glasses", "ShortSleeve", "LongSleeve", "UpperStride", "UpperLogo", "UpperPlaid",
    "UpperSplice", "LowerStripe", "LowerPattern", "LongCoat", "Trousers", "Shorts", "Skirt&Dress",
    "boots", "HandBag", "ShoulderBag", "Backpack", "HoldObjectsInFront", "AgeOver60", "Age18-60",
    "AgeLess18", "Female", "Front", "Side", "Back",
)


@dataclass(frozen=True)
class Node:
    """One variable: ``states[k]`` is the attribute state k sets (None: none)."""

    name: str
    states: tuple[str | None, ...]
    parents: tuple[str, ...] = ()


def _binary(name: str, attribute: str, *parents: str) -> Node:
    return Node(name, (None, attribute), parents)


# Topological order: every parent comes before its children.
NODES: tuple[Node, ...] = (
    Node("age", ("AgeLess18", "Age18-60", "AgeOver60")),
    Node("view", ("Front", "Side", "Back"), ("age",)),
    _binary("female", "Female", "age"),
    Node("sleeve", ("LongSleeve", "ShortSleeve"), ("female", "age")),
    Node("lower", ("Trousers", "Shorts", "Skirt&Dress"), ("female", "age", "sleeve")),
    _binary("coat", "LongCoat", "sleeve", "lower", "female"),
    _binary("hat", "Hat", "sleeve", "female", "view"),
    _binary("glasses", "Glasses", "view", "sleeve", "female"),
    _binary("logo", "UpperLogo", "view", "sleeve", "female"),
    _binary("stride", "UpperStride", "female", "sleeve", "logo"),
    _binary("plaid", "UpperPlaid", "female", "sleeve", "logo"),
    _binary("splice", "UpperSplice", "female", "sleeve", "coat"),
    _binary("lower_stripe", "LowerStripe", "lower", "female", "stride"),
    _binary("lower_pattern", "LowerPattern", "lower", "female", "logo"),
    _binary("boots", "boots", "female", "lower", "sleeve"),
    _binary("backpack", "Backpack", "age", "view", "female"),
    _binary("shoulder_bag", "ShoulderBag", "female", "backpack", "view"),
    _binary("handbag", "HandBag", "female", "shoulder_bag", "backpack"),
    _binary("hold", "HoldObjectsInFront", "handbag", "view"),
)
NODE_INDEX = {node.name: k for k, node in enumerate(NODES)}


def cardinality(name: str) -> int:
    return len(NODES[NODE_INDEX[name]].states)


def parent_rows(node: Node, states: dict[str, np.ndarray], n: int) -> np.ndarray:
    """(n,) row of ``node``'s table for each sample: parents' states, row-major (0 for roots)."""
    row = np.zeros(n, dtype=np.int64)
    for parent in node.parents:
        row = row * cardinality(parent) + states[parent]
    return row


@lru_cache(maxsize=1)
def load_tables() -> dict[str, np.ndarray]:
    """The calibrated tables: node name -> (rows, states) probabilities."""
    text = resources.files("parlab.data.synthpa").joinpath("pa100k_network.json").read_text()
    tables = {name: np.asarray(t, dtype=np.float64) for name, t in json.loads(text)["tables"].items()}
    for node in NODES:
        rows = int(np.prod([cardinality(p) for p in node.parents])) if node.parents else 1
        if tables[node.name].shape != (rows, len(node.states)):
            raise ValueError(f"pa100k_network.json: table {node.name!r} has the wrong shape")
    return tables


def _stratified_uniforms(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n,) uniforms, stratified within each group of equal ``groups`` value.

    In a group of m samples each of the m strata [k/m, (k+1)/m) holds exactly
    one uniform, assigned to the samples in random order: every uniform is
    still U(0, 1) and independent of its group, but the empirical conditional
    distributions (and hence the marginals) carry almost no sampling noise.
    """
    n = len(groups)
    order = np.lexsort((rng.random(n), groups))  # random order inside each group
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    u = np.empty(n)
    u[order] = (rank + rng.random(n)) / np.repeat(sizes, sizes)
    return u


def sample_states(n: int, rng: np.random.Generator, stratified: bool = True) -> dict[str, np.ndarray]:
    """Ancestral sampling: node name -> (n,) state indices.

    ``stratified`` draws each node's uniforms stratified within each
    configuration of its parents (see :func:`_stratified_uniforms`), so a
    dataset of a few thousand images matches the network's marginals closely.
    """
    tables = load_tables()
    states: dict[str, np.ndarray] = {}
    for node in NODES:
        rows = parent_rows(node, states, n)
        cumulative = np.cumsum(tables[node.name][rows], axis=1)
        u = _stratified_uniforms(rows, rng) if stratified else rng.random(n)
        states[node.name] = (u[:, None] * cumulative[:, -1:] >= cumulative).sum(axis=1).clip(max=len(node.states) - 1)
    return states


def states_to_labels(states: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 26) uint8 labels in :data:`ATTRIBUTES` order from node states."""
    n = len(states[NODES[0].name])
    labels = np.zeros((n, len(ATTRIBUTES)), dtype=np.uint8)
    column = {a: j for j, a in enumerate(ATTRIBUTES)}
    for node in NODES:
        for k, attribute in enumerate(node.states):
            if attribute is not None:
                labels[states[node.name] == k, column[attribute]] = 1
    return labels


def labels_to_states(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`states_to_labels` for labels that respect the one-hot groups.

    Rows that break a group (no or several states on) take the first state
    that is on, or state 0; calibration counts only consistent rows anyway.
    """
    column = {a: j for j, a in enumerate(ATTRIBUTES)}
    states = {}
    for node in NODES:
        on = np.stack(
            [labels[:, column[a]] == 1 if a is not None else np.zeros(len(labels), bool) for a in node.states], 1
        )
        if node.states[0] is None:  # binary: state 1 iff its attribute is on
            states[node.name] = on[:, 1].astype(np.int64)
        else:
            states[node.name] = np.where(on.any(1), on.argmax(1), 0)
    return states


def sample_labels(n: int, seed: int) -> np.ndarray:
    """(n, 26) 0/1 labels of SynthPA in :data:`ATTRIBUTES` order, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return states_to_labels(sample_states(n, rng))
