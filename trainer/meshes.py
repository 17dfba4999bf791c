"""GIAS atlas meshes of the LLP26 shape model turned into closed triangle surfaces (no VTK, numpy only).

* The ``.mesh`` files are "flat" GIAS ensemble meshes: elements (Lagrange ``quad_Lm_Ln`` with (m+1)(n+1)
  points, xi1 fastest; ``simplex_Ln_Ln`` with (n+1)(n+2)/2 points, row by row) and a symmetric list of
  coincident element points. Global node numbers are given in order of first appearance (elements in numeric
  order, their points in order); this reproduces the file's ``number_of_points`` and gives closed,
  edge-manifold surfaces (every edge shared by exactly two triangles) for all three meshes.
* A ``Surface`` is built once from the mean shape's nodes (each element sampled on a sub-grid of twice its
  order, coincident points merged); any draw's nodes are then evaluated on it by one matrix product, so a draw
  keeps the mean's topology. ``trainer.shapemodel.bone_surfaces`` does this per bone of a draw.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from KneeSegmentationLib.errors import DatasetError


def _lagrange_1d(order: int, t: np.ndarray) -> np.ndarray:
    """(len(t), order+1) Lagrange basis on equispaced nodes of [0, 1]."""
    nodes = np.linspace(0, 1, order + 1)
    out = np.ones((len(t), order + 1))
    for i in range(order + 1):
        for j in range(order + 1):
            if j != i:
                out[:, i] *= (t - nodes[j]) / (nodes[i] - nodes[j])
    return out


def _quad_element(m: int, n: int, div: int) -> tuple[np.ndarray, np.ndarray]:
    """Basis (sub-points, (m+1)(n+1)) on a (div+1)² sub-grid and its triangles."""
    t = np.linspace(0, 1, div + 1)
    b1, b2 = _lagrange_1d(m, t), _lagrange_1d(n, t)
    basis = np.einsum("ai,bj->baji", b1, b2).reshape((div + 1) ** 2, (n + 1) * (m + 1))  # xi1 fastest
    idx = np.arange((div + 1) ** 2).reshape(div + 1, div + 1)  # [xi2, xi1]
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return basis, tris


def _simplex_element(n: int, div: int) -> tuple[np.ndarray, np.ndarray]:
    """Basis of the order-n Lagrange triangle (nodes row by row: xi1 fastest, xi2 rows) on a sub-grid."""
    def grid(k):
        return [(i, j) for j in range(k + 1) for i in range(k + 1 - j)]

    nodes, subs = grid(n), grid(div)
    l1 = np.array([i for i, _ in subs]) / div
    l2 = np.array([j for _, j in subs]) / div
    l0 = 1 - l1 - l2
    basis = np.ones((len(subs), len(nodes)))
    for col, (i, j) in enumerate(nodes):
        for lam, power in ((l1, i), (l2, j), (l0, n - i - j)):
            for k in range(power):
                basis[:, col] *= (n * lam - k) / (k + 1)
    where = {p: q for q, p in enumerate(subs)}
    tris = []
    for j in range(div):
        for i in range(div - j):
            tris.append((where[i, j], where[i + 1, j], where[i, j + 1]))
            if i + j < div - 1:
                tris.append((where[i + 1, j], where[i + 1, j + 1], where[i, j + 1]))
    return basis, np.array(tris)


@dataclass(frozen=True)
class Surface:
    """How to turn a mesh's nodes into a closed triangle surface: points = basis @ nodes, merged."""

    name: str
    node_ids: np.ndarray  # mesh nodes this surface uses
    groups: tuple  # (basis (S, P), element node ids (E, P) into the mesh's nodes)
    merge: np.ndarray  # per evaluated point (all groups, all elements, in order): its merged index
    triangles: np.ndarray  # (T, 3) into merged points

    def evaluate(self, nodes: np.ndarray) -> np.ndarray:
        """Merged surface points (K, 3) for the mesh's node coordinates ``nodes``."""
        pts = np.concatenate([np.einsum("sp,epd->esd", basis, nodes[ids]).reshape(-1, 3)
                              for basis, ids in self.groups])
        out = np.empty((int(self.merge.max()) + 1, 3))
        out[self.merge] = pts
        return out


def read_mesh(stem: Path) -> list[tuple[str, np.ndarray]]:
    """[(basis name, global node ids of the element's points)] of a flat GIAS mesh (``.mesh`` + ``.ens``)."""
    try:
        mesh = json.loads(Path(f"{stem}.mesh").read_text())
        ens = json.loads(Path(f"{stem}.ens").read_text())
        kinds = {int(k): v.split()[-1] for k, v in mesh["elements"].items()}
        basis = {k: ens["basis"][t] for k, t in kinds.items()}
        links: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for key, value in mesh["connectivity"].items():
            a = tuple(int(x) for x in key.split("_"))
            links[a] = [tuple(int(x) for x in v.split("_")) for v in value.split()]
        expected = int(mesh["number_of_points"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{stem}: unreadable atlas mesh ({type(e).__name__}: {e})") from e
    number: dict[tuple[int, int], int] = {}
    elements, got = [], 0
    for k in sorted(basis):
        kind = basis[k]
        orders = [int(p[1:]) for p in kind.split("_")[1:]]
        count = (orders[0] + 1) * (orders[1] + 1) if kind.startswith("quad") else (orders[0] + 1) * (orders[0] + 2) // 2
        ids = []
        for p in range(count):
            if (k, p) not in number:
                new, stack, got = got, [(k, p)], got + 1
                group = {(k, p)}
                while stack:
                    for q in links.get(stack.pop(), []):
                        if q not in group:
                            group.add(q)
                            stack.append(q)
                for q in group:
                    number[q] = new
            ids.append(number[(k, p)])
        elements.append((kind, np.array(ids)))
    if got != expected:
        raise DatasetError(f"{stem}: numbering gives {got} nodes, the file says {expected}")
    return elements


def components(elements: list[tuple[str, np.ndarray]]) -> list[list[int]]:
    """Element indices per connected component (sharing nodes), largest first."""
    parent = list(range(len(elements)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for e, (_, ids) in enumerate(elements):
        for n in ids.tolist():
            if n in owner:
                parent[find(e)] = find(owner[n])
            else:
                owner[n] = e
    comps: dict[int, list[int]] = {}
    for e in range(len(elements)):
        comps.setdefault(find(e), []).append(e)
    return sorted(comps.values(), key=len, reverse=True)


def build_surface(name: str, elements: list[tuple[str, np.ndarray]], mean_nodes: np.ndarray) -> Surface:
    groups, tris, offset = [], [], 0
    for kind in sorted({k for k, _ in elements}):
        orders = [int(p[1:]) for p in kind.split("_")[1:]]
        div = 2 * max(orders)
        basis, local = _quad_element(orders[0], orders[1], div) if kind.startswith("quad") else \
            _simplex_element(orders[0], div)
        ids = np.stack([i for k, i in elements if k == kind])
        groups.append((basis, ids))
        tris.append((local[None] + offset + basis.shape[0] * np.arange(len(ids))[:, None, None]).reshape(-1, 3))
        offset += basis.shape[0] * len(ids)
    pts = np.concatenate([np.einsum("sp,epd->esd", b, mean_nodes[i]).reshape(-1, 3) for b, i in groups])
    # Points on shared element edges coincide exactly (the edge's geometry depends on its nodes only).
    _, merge = np.unique(np.round(pts, 5), axis=0, return_inverse=True)
    merge = merge.ravel()
    t = merge[np.concatenate(tris)]
    t = t[(t[:, 0] != t[:, 1]) & (t[:, 1] != t[:, 2]) & (t[:, 0] != t[:, 2])]  # collapsed at degenerate corners
    node_ids = np.unique(np.concatenate([i for _, i in elements]))
    return Surface(name, node_ids, tuple(groups), merge, t)


def open_edges(triangles: np.ndarray) -> int:
    """Edges not shared by exactly two triangles (0 for a closed, edge-manifold surface)."""
    e = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return int(np.sum(counts != 2))
