"""``python -m ctxproto.bench.cache_guard_plot``: the cache guards' recall against false hits.

Draws ``docs/img/cache-guard-pr.png``: for the dev split (out-of-fold
probabilities, as the operating point is chosen), the test split and the
independent split by other writers (the shipped weights), the learned
verifier's curve over its probability cut at its cosine floor, the rules
guard over the cosine threshold, and plain cosine (GPTCache) over the
threshold, with the shipped operating point and GPTCache's default 0.8
marked. Kept apart from fitting so that fitting never
reads a held-out split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto.bench.cache_pairs import load_pairs
from ctxproto.bench.cache_verifier import (
    CUTS,
    design,
    fitting_table,
    identifiers_clear,
    out_of_fold,
    pair_table,
    probability,
    probe_basis,
    rates,
    seed_groups,
)

__all__ = ["main"]

PLOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "cache-guard-pr.png"
THRESHOLDS = tuple(float(t) for t in np.linspace(0.3, 0.98, 69))


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctxproto.stores.semantic_cache.verifier import HitVerifier

    verifier = HitVerifier.load()
    weights = np.concatenate([verifier.weights, verifier.interaction_weights])
    splits = ("dev", "test", "independent")
    figure, panels = plt.subplots(1, len(splits), figsize=(17, 5), sharey=True)
    for panel, split in zip(panels, splits, strict=True):
        if split == "dev":
            rows, features, similarity, interactions = fitting_table()
        else:
            rows = load_pairs(split)
            features, similarity, interactions = pair_table(rows)
        if split == "dev":
            labels = np.array([float(bool(r["hit"])) for r in rows])
            inputs = design(features, interactions, probe_basis(interactions))
            learned = out_of_fold(inputs, labels, seed_groups(rows), 0, verifier.l2)
        else:
            inputs = np.hstack([features, interactions])
            learned = probability(inputs, weights, verifier.bias)
        # What the verifier may accept: above its floor, no other order number or code.
        floor = (similarity >= verifier.min_similarity) & identifiers_clear(rows)
        _curve(panel, rows, [floor & (learned >= c) for c in CUTS], "learned verifier", "C0")
        no_conflict = _no_rule_conflict(rows)
        _curve(panel, rows, [no_conflict & (similarity >= t) for t in THRESHOLDS], "rules", "C1")
        _curve(panel, rows, [similarity >= t for t in THRESHOLDS], "plain cosine", "k")
        chosen = rates(floor & (learned >= verifier.min_probability), rows)
        panel.plot(chosen["false_hits"], chosen["recall"], "r*", markersize=14, label="shipped")
        gptcache = rates(similarity >= 0.8, rows)
        panel.plot(gptcache["false_hits"], gptcache["recall"], "ks", label="plain cosine 0.8")
        panel.axvline(0.02, color="grey", linestyle=":", linewidth=1)
        panel.set_title(f"{split} split" + (" (out-of-fold)" if split == "dev" else ""))
        panel.set_xlabel("false-hit rate on near misses")
        panel.set_xlim(0, 0.7)
        panel.set_ylim(0, 1)
        panel.grid(alpha=0.3)
    panels[0].set_ylabel("recall on paraphrases + near-repeats")
    panels[-1].legend(fontsize=8, loc="lower right")
    figure.suptitle("Semantic cache guards: recall against false hits")
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=100, bbox_inches="tight")
    print(PLOT)


def _curve(
    panel: Any, rows: list[dict[str, Any]], accepted: list[Any], label: str, color: str
) -> None:
    points = [rates(a, rows) for a in accepted]
    panel.plot(
        [p["false_hits"] for p in points], [p["recall"] for p in points], color=color, label=label
    )


def _no_rule_conflict(rows: list[dict[str, Any]]) -> npt.NDArray[np.bool_]:
    from ctxproto.stores.semantic_cache.query_slots import QuerySlots, slot_conflict

    return np.array(
        [slot_conflict(QuerySlots.of(r["b"]), QuerySlots.of(r["a"])) is None for r in rows]
    )


if __name__ == "__main__":
    main()
