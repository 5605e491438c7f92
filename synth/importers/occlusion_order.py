"""Depth order of annotated objects from order fields, pairwise constraints and visible masks.

The result is only a depth order (a topological order of the "in front of" graph); layers, visible
masks and occlusion edges then come from ``synth.layering.compute_layers``, as for every source.

Evidence that ``i`` is in front of ``j``, strongest first; a pair named by a stronger source is not
looked at by the weaker ones:

1. pairwise constraints (COCOA's ``depth_constraint``): ``(i, j)`` means i is in front of j;
2. per-object ranks, smaller = nearer, for pairs whose amodal masks overlap, whose ranks differ
   and that share a rank group: COCOA / D2SA ``order`` (one group per image) or KINS ``ico_id``
   within its occlusion cluster ``oco_id`` (one group per cluster);
3. visible masks: ``e[i, j]`` = pixels of i's visible mask (clipped to i's amodal mask) inside j's
   amodal mask. i is in front of j when ``e[i, j] > e[j, i]``; equal non-zero evidence both ways
   counts as both edges (a cycle). The majority rule absorbs the few boundary pixels where
   separately drawn amodal and visible polygons disagree.

A graph with a cycle has no depth order: :func:`depth_order` returns the cycle instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DepthOrder:
    """``depth`` int64[N] (0 = front) or, when the graph has a cycle, ``depth=None`` and ``cycle``
    (object indices, each in front of the next, the last in front of the first). ``front_of``
    bool[N, N] is the evidence graph."""

    depth: np.ndarray | None
    cycle: list[int] | None
    front_of: np.ndarray


def visible_evidence(amodal_masks: np.ndarray, visible_masks: np.ndarray) -> np.ndarray:
    """int64[N, N]: ``e[i, j]`` = |visible_i ∩ amodal_i ∩ amodal_j| for i != j (0 on the diagonal).

    Args: ``amodal_masks``, ``visible_masks`` bool[N, H, W].
    """
    n = amodal_masks.shape[0]
    amodal = amodal_masks.reshape(n, -1)
    exact = np.float32 if amodal.shape[1] < 2**24 else np.float64  # counts stay exact integers
    visible = (visible_masks.reshape(n, -1) & amodal).astype(exact)
    evidence = np.rint(visible @ amodal.astype(exact).T).astype(np.int64)
    np.fill_diagonal(evidence, 0)
    return evidence


def front_of_graph(
    overlaps: np.ndarray,
    constraints: list[tuple[int, int]] | None = None,
    ranks: np.ndarray | None = None,
    evidence: np.ndarray | None = None,
    rank_groups: np.ndarray | None = None,
) -> np.ndarray:
    """bool[N, N] ``g[i, j]``: i is in front of j, from the three sources (strongest first).

    Args:
        overlaps: bool[N, N], amodal masks share a pixel.
        constraints: ``(front, back)`` index pairs.
        ranks: float[N] (NaN = unknown), smaller = nearer.
        evidence: int[N, N] from :func:`visible_evidence`.
        rank_groups: float[N] (NaN = no group): ranks are compared only inside a group
            (KINS ``oco_id``); None = one group for all.
    """
    n = overlaps.shape[0]
    graph = np.zeros((n, n), dtype=bool)
    decided = np.eye(n, dtype=bool)
    for front, back in constraints or []:
        if front != back:
            graph[front, back] = True
            decided[front, back] = decided[back, front] = True
    if ranks is not None:
        ranks = np.asarray(ranks, dtype=np.float64)
        same_group = True
        if rank_groups is not None:
            groups = np.asarray(rank_groups, dtype=np.float64)
            same_group = groups[:, None] == groups[None, :]  # NaN never equals: ungrouped stay apart
        nearer = (ranks[:, None] < ranks[None, :]) & same_group & overlaps & ~decided
        graph |= nearer
        decided |= nearer | nearer.T
    if evidence is not None:
        forward = (evidence > evidence.T) & ~decided
        tie = (evidence == evidence.T) & (evidence > 0) & ~decided
        graph |= forward | tie
    return graph


def _find_cycle(graph: np.ndarray, nodes: list[int]) -> list[int]:
    """A cycle among ``nodes`` (each has an incoming edge from another of them)."""
    inside = np.zeros(graph.shape[0], dtype=bool)
    inside[nodes] = True
    seen: dict[int, int] = {}
    path: list[int] = []
    node = nodes[0]
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        # walk backwards along an incoming edge from a node still inside the cycle's component
        node = int(np.flatnonzero(graph[:, node] & inside)[0])
    cycle = path[seen[node] :]
    return cycle[::-1]  # each in front of the next


def depth_order(graph: np.ndarray, tiebreak: np.ndarray | None = None) -> DepthOrder:
    """Topological order of ``graph`` (bool[N, N], ``g[i, j]`` = i in front of j) as depths.

    Among objects with no remaining occluder the smallest ``tiebreak`` (then index) goes first.
    """
    n = graph.shape[0]
    key = np.arange(n, dtype=np.float64) if tiebreak is None else np.asarray(tiebreak, dtype=np.float64)
    key = np.where(np.isnan(key), np.inf, key)
    indegree = graph.sum(axis=0).astype(np.int64)
    placed = np.zeros(n, dtype=bool)
    depth = np.zeros(n, dtype=np.int64)
    for position in range(n):
        ready = np.flatnonzero((indegree == 0) & ~placed)
        if ready.size == 0:
            remaining = np.flatnonzero(~placed).tolist()
            return DepthOrder(depth=None, cycle=_find_cycle(graph, remaining), front_of=graph)
        chosen = ready[np.lexsort((ready, key[ready]))[0]]
        depth[chosen] = position
        placed[chosen] = True
        indegree -= graph[chosen].astype(np.int64)
    return DepthOrder(depth=depth, cycle=None, front_of=graph)


def unordered_overlaps(graph: np.ndarray, overlaps: np.ndarray) -> int:
    """How many overlapping pairs have no path between them in ``graph`` (order left to tie-breaks)."""
    reach = graph.copy()
    for k in range(graph.shape[0]):
        reach |= reach[:, k : k + 1] & reach[k : k + 1, :]
    related = reach | reach.T | np.eye(graph.shape[0], dtype=bool)
    return int(np.triu(overlaps & ~related, 1).sum())


def contradicted_pairs(graph: np.ndarray, evidence: np.ndarray) -> int:
    """Pairs the order puts ``i`` before ``j`` while the visible masks say the opposite (a warning:
    many of them hint at an order field read with the wrong convention)."""
    return int((graph & (evidence.T > evidence)).sum())
