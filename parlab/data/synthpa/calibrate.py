"""Calibrate SynthPA's label network on real PA100k train labels.

``python -m parlab.data.synthpa.calibrate /path/to/PA100k`` counts each node's
conditional table on the train split (add-one smoothing towards the node's
marginal) and rewrites ``pa100k_network.json``. The tables are aggregate
statistics (conditional frequencies), not labels of any image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from parlab.data.synthpa.network import ATTRIBUTES, NODES, cardinality, labels_to_states, parent_rows

SMOOTHING = 1.0  # pseudo-count per table row, spread as the node's marginal


def fit_tables(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Conditional probability tables from (N, 26) labels in ATTRIBUTES order."""
    states = labels_to_states(labels)
    tables = {}
    for node in NODES:
        rows = int(np.prod([cardinality(p) for p in node.parents])) if node.parents else 1
        counts = np.zeros((rows, len(node.states)))
        np.add.at(counts, (parent_rows(node, states, len(labels)), states[node.name]), 1)
        marginal = counts.sum(0) / counts.sum()
        smoothed = counts + SMOOTHING * marginal
        tables[node.name] = smoothed / smoothed.sum(1, keepdims=True)
    return tables


def main(argv: list[str] | None = None) -> None:
    from parlab.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="PA100k folder (or its annotation.mat)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("pa100k_network.json")))
    args = parser.parse_args(argv)
    ann = load_dataset("pa100k", args.root)
    if tuple(ann.attributes) != ATTRIBUTES:
        raise SystemExit(f"{ann.annotation_file}: attributes differ from PA100k's")
    tables = fit_tables(ann.split_labels("train"))
    payload = {
        "description": "SynthPA label network; conditional tables calibrated on PA100k train labels",
        "nodes": {n.name: {"states": list(n.states), "parents": list(n.parents)} for n in NODES},
        "tables": {k: np.round(v, 5).tolist() for k, v in tables.items()},
    }
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
