"""Live lesion burden: numbers kept current edit by edit instead of recomputed.

The Correct widget shows lesion mL, lesion count, % of each lung and the
ground-glass / consolidation split after every brush stroke. Recomputing them
is a pass over the whole volume (a 26-connected labelling of a 300x512x512
mask takes about a second on one core), so :class:`LiveBurden` keeps counts
and updates them from the changed voxels only:

* volumes: lesion voxels per (lung label, density class), moved by the changed
  voxels' lung label and intensity;
* lesion count: :class:`ComponentCounter` keeps a component id for every
  foreground voxel. Painting merges components through a labelling of the
  stroke's box (plus one voxel); erasing re-labels a component only when that
  box cannot show that it stayed in one piece (then its own box is labelled).

Both take the same ``(flat, before, after)`` change records as
:class:`~napari_covid_seg.correction.EditHistory`. No Qt, no napari.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..inference.lungs import LEFT_LUNG, RIGHT_LUNG
from ..inference.quantify import Quantification, from_counts
from ._common import Box, bounding_box, check_mask
from .components import Components

_NEW = -1  # marker of freshly painted voxels inside a merge window


class ComponentCounter:
    """Number of 26-connected components of ``mask != 0``, updated per edit.

    Args:
        mask: the label mask ``(z, y, x)`` (any integer dtype); only non-zero
            matters. The counter keeps its own int32 component ids over the
            bounding box of everything ever painted (not over the whole volume).
    """

    def __init__(self, mask: np.ndarray) -> None:
        mask = check_mask(mask)
        self.shape: tuple[int, ...] = tuple(mask.shape)
        self._structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
        self.reset(mask)

    # -- state -------------------------------------------------------------------------------
    def reset(self, mask: np.ndarray) -> None:
        """Label ``mask`` from scratch (one full labelling of its bounding box)."""
        fg = np.asarray(mask) != 0
        box = bounding_box(fg)
        if box is None:
            self._box: Box = tuple(slice(0, 0) for _ in self.shape)
            self._labels = np.zeros((0,) * len(self.shape), np.int32)
            n = 0
        else:
            self._box = box
            self._labels = np.zeros(tuple(s.stop - s.start for s in box), np.int32)
            n = int(ndimage.label(fg[box], structure=self._structure, output=self._labels))
        capacity = max(16, 2 * (n + 1))
        self._root = np.arange(capacity, dtype=np.int64)  # id -> its component's id
        self._size = np.zeros(capacity, np.int64)
        self._lo = np.zeros((capacity, len(self.shape)), np.int64)  # box per id (full coords)
        self._hi = np.zeros((capacity, len(self.shape)), np.int64)
        self._next = n + 1
        self.n = n
        if n:
            self._size[: n + 1] = np.bincount(self._labels.ravel(), minlength=n + 1)
            self._size[0] = 0
            start = np.array([s.start for s in self._box])
            for i, obj in enumerate(ndimage.find_objects(self._labels), start=1):
                if obj is not None:
                    self._lo[i] = [s.start for s in obj] + start
                    self._hi[i] = [s.stop for s in obj] + start

    def _new_id(self) -> int:
        if self._next >= self._root.size:
            grow = self._root.size
            self._root = np.concatenate([self._root, np.arange(grow, 2 * grow)])
            self._size = np.concatenate([self._size, np.zeros(grow, np.int64)])
            self._lo = np.concatenate([self._lo, np.zeros((grow, self._lo.shape[1]), np.int64)])
            self._hi = np.concatenate([self._hi, np.zeros((grow, self._hi.shape[1]), np.int64)])
        new = self._next
        self._next += 1
        return new

    def _ensure_box(self, lo: Sequence[int], hi: Sequence[int]) -> None:
        """Grow the id array so that it covers ``[lo, hi)`` (full coordinates)."""
        old = self._box
        if all(s.start <= a and b <= s.stop for s, a, b in zip(old, lo, hi, strict=True)):
            return
        empty = self._labels.size == 0
        new = tuple(
            slice(a, b) if empty else slice(min(s.start, a), max(s.stop, b))
            for s, a, b in zip(old, lo, hi, strict=True)
        )
        labels = np.zeros(tuple(s.stop - s.start for s in new), np.int32)
        if not empty:
            inner = tuple(
                slice(s.start - t.start, s.stop - t.start) for s, t in zip(old, new, strict=True)
            )
            labels[inner] = self._labels
        self._box, self._labels = new, labels

    def _absorb(self, keep: int, other: int) -> None:
        """Component ``other`` joins ``keep``."""
        self._root[self._root == other] = keep
        self._size[keep] += self._size[other]
        self._size[other] = 0
        self._lo[keep] = np.minimum(self._lo[keep], self._lo[other])
        self._hi[keep] = np.maximum(self._hi[keep], self._hi[other])
        self.n -= 1

    def _local(self, lo: Sequence[int], hi: Sequence[int]) -> Box:
        return tuple(
            slice(a - s.start, b - s.start) for a, b, s in zip(lo, hi, self._box, strict=True)
        )

    # -- updates -----------------------------------------------------------------------------
    def update(self, flat: np.ndarray, before: np.ndarray, after: np.ndarray) -> int:
        """Apply one edit: voxels at C-order ``flat`` went from ``before`` to ``after``.

        Returns the new number of components.
        """
        flat = np.asarray(flat, dtype=np.intp).ravel()
        now = np.broadcast_to(np.asarray(after) != 0, flat.shape)
        flip = now != np.broadcast_to(np.asarray(before) != 0, flat.shape)
        if not flip.any():
            return self.n
        flat, now = flat[flip], now[flip]
        coords = np.unravel_index(flat, self.shape)
        lo = [max(0, int(c.min()) - 1) for c in coords]
        hi = [min(n, int(c.max()) + 2) for c, n in zip(coords, self.shape, strict=True)]
        self._ensure_box(lo, hi)
        local = tuple(c - s.start for c, s in zip(coords, self._box, strict=True))
        window = self._local(lo, hi)
        touched: set[int] = set()
        gone = ~now
        if gone.any():
            at = tuple(c[gone] for c in local)
            roots, counts = np.unique(self._root[self._labels[at]], return_counts=True)
            keep = roots > 0
            roots, counts = roots[keep], counts[keep]
            self._size[roots] -= counts
            self._labels[at] = 0
            touched = {int(r) for r in roots}
        if now.any():
            self._labels[tuple(c[now] for c in local)] = _NEW
            self._merge(window, lo, hi)
        for root in {int(self._root[r]) for r in touched}:
            if self._size[root] <= 0:
                self.n -= 1
                self._size[root] = 0
            elif self._pieces_in(window, root) != 1:
                self._relabel(root)
        return self.n

    def _merge(self, window: Box, lo: Sequence[int], hi: Sequence[int]) -> None:
        """Give the painted voxels (marked ``_NEW``) in ``window`` their component ids."""
        sub = self._labels[window]
        pieces, k = ndimage.label(sub != 0, structure=self._structure)
        new = sub == _NEW
        old = sub > 0
        piece_of_new = pieces[new]
        wanted = np.unique(piece_of_new)
        owners: dict[int, list[int]] = {int(j): [] for j in wanted}
        if old.any():
            pairs = np.unique(np.stack([pieces[old], self._root[sub[old]]]), axis=1)
            for j, r in pairs.T:
                if int(j) in owners:
                    owners[int(j)].append(int(r))
        count = np.bincount(piece_of_new, minlength=k + 1)
        target = np.zeros(k + 1, np.int64)
        for j, roots in owners.items():
            live = sorted({int(self._root[r]) for r in roots})
            if live:
                keep = live[0]
                for other in live[1:]:
                    if self._root[other] == other and other != keep:
                        self._absorb(keep, other)
            else:
                keep = self._new_id()
                self._lo[keep], self._hi[keep] = lo, hi
                self.n += 1
            self._size[keep] += int(count[j])
            self._lo[keep] = np.minimum(self._lo[keep], lo)
            self._hi[keep] = np.maximum(self._hi[keep], hi)
            target[j] = keep
        sub[new] = target[piece_of_new]

    def _pieces_in(self, window: Box, root: int) -> int:
        sub = self._labels[window]
        mine = self._root[sub] == root
        mine &= sub > 0
        return int(ndimage.label(mine, structure=self._structure)[1])

    def _relabel(self, root: int) -> None:
        """Label component ``root`` again over its box; split it into its pieces."""
        box = self._local(self._lo[root], self._hi[root])
        sub = self._labels[box]
        mine = (sub > 0) & (self._root[sub] == root)
        pieces, k = ndimage.label(mine, structure=self._structure)
        if k == 0:
            self._size[root] = 0
            self.n -= 1
            return
        ids = np.array([root] + [self._new_id() for _ in range(k - 1)], np.int64)
        sub[mine] = ids[pieces[mine] - 1]
        self._size[ids] = np.bincount(pieces[mine], minlength=k + 1)[1:]
        start = np.array([s.start for s in self._box]) + [s.start for s in box]
        for i, obj in zip(ids, ndimage.find_objects(pieces), strict=True):
            self._lo[i] = [s.start for s in obj] + start
            self._hi[i] = [s.stop for s in obj] + start
        self.n += k - 1

    # -- queries -----------------------------------------------------------------------------
    def components(self) -> Components:
        """The current components with consecutive ids 1..n (for lesion lists)."""
        live = np.flatnonzero(
            (self._root[: self._next] == np.arange(self._next)) & (self._size[: self._next] > 0)
        )
        live = live[live > 0]
        lut = np.zeros(self._next, np.int32)
        lut[live] = np.arange(1, live.size + 1, dtype=np.int32)
        labels = lut[self._root[: self._next]][self._labels]
        return Components(labels, self._box, int(live.size), self.shape)

    def ids_at(self, flat: Iterable[int]) -> set[int]:
        """Component ids (as in :meth:`select`) of the foreground voxels at ``flat``."""
        flat = np.asarray(list(flat) if not isinstance(flat, np.ndarray) else flat, np.intp)
        coords = np.unravel_index(flat, self.shape)
        inside = np.ones(flat.shape, bool)
        for c, s in zip(coords, self._box, strict=True):
            inside &= (c >= s.start) & (c < s.stop)
        local = tuple(c[inside] - s.start for c, s in zip(coords, self._box, strict=True))
        ids = self._root[self._labels[local]]
        return {int(i) for i in ids if i > 0}

    def select(self, ids: Iterable[int]) -> np.ndarray:
        """Boolean full-size mask of the voxels of components ``ids``."""
        out = np.zeros(self.shape, bool)
        wanted = np.zeros(self._next, bool)
        wanted[[int(i) for i in ids]] = True
        out[self._box] = wanted[self._root[: self._next]][self._labels]
        return out


class LiveBurden:
    """Lesion burden (:class:`~napari_covid_seg.inference.quantify.Quantification`) kept current.

    Args:
        lesions: lesion mask ``(z, y, x)`` (non-zero = lesion). Not copied: pass
            the array being edited and report every edit.
        voxel_volume_ml: volume of one voxel in mL.
        lungs: optional lung labels (:data:`RIGHT_LUNG`, :data:`LEFT_LUNG`; other
            values are not lung), same shape.
        image: optional CT voxels (same shape) for the GGO/consolidation split.
        dense_from: lesion voxels with ``image >= dense_from`` are consolidation
            (:func:`~napari_covid_seg.inference.quantify.consolidation_threshold`).
    """

    def __init__(
        self,
        lesions: np.ndarray,
        voxel_volume_ml: float,
        lungs: np.ndarray | None = None,
        image: np.ndarray | None = None,
        dense_from: float | None = None,
    ) -> None:
        self.lesions = check_mask(lesions)
        self.voxel_ml = float(voxel_volume_ml)
        self.image = image if image is not None and dense_from is not None else None
        self.dense_from = dense_from
        for name, arr in (("lungs", lungs), ("image", self.image)):
            if arr is not None and np.shape(arr) != self.lesions.shape:
                raise ValueError(f"{name} {np.shape(arr)} and lesions {self.lesions.shape} differ")
        self.counter = ComponentCounter(self.lesions)
        self.set_lungs(lungs)

    # -- helpers -----------------------------------------------------------------------------
    def _lung_at(self, flat: np.ndarray) -> np.ndarray:
        if self.lungs is None:
            return np.zeros(flat.shape, np.intp)
        return _lung_codes(np.take(self.lungs, flat))

    def _dense_at(self, flat: np.ndarray) -> np.ndarray:
        if self.image is None:
            return np.zeros(flat.shape, np.intp)
        return (np.take(self.image, flat) >= self.dense_from).astype(np.intp)

    def _count(self, flat: np.ndarray, sign: int) -> None:
        code = 2 * self._lung_at(flat) + self._dense_at(flat)
        self._per_class += sign * np.bincount(code, minlength=6).reshape(3, 2)

    # -- full recomputation --------------------------------------------------------------------
    def set_lungs(self, lungs: np.ndarray | None) -> None:
        """Use another lung label array (or none); recounts everything but components."""
        if lungs is not None and np.shape(lungs) != self.lesions.shape:
            raise ValueError(f"lungs {np.shape(lungs)} and lesions {self.lesions.shape} differ")
        self.lungs = lungs
        self._lung_voxels = np.zeros(3, np.int64)
        if lungs is not None:
            counts = np.bincount(np.asarray(lungs).ravel(), minlength=3)
            self._lung_voxels[[RIGHT_LUNG, LEFT_LUNG]] = counts[[RIGHT_LUNG, LEFT_LUNG]]
        self._per_class = np.zeros((3, 2), np.int64)  # [lung code, dense]
        self._count(np.flatnonzero(self.lesions), +1)

    def reset(self, lesions: np.ndarray | None = None) -> None:
        """Recount from scratch (e.g. the lesion layer got a new array)."""
        if lesions is not None:
            self.lesions = check_mask(lesions)
        self.counter.reset(self.lesions)
        self.set_lungs(self.lungs)

    # -- edits -------------------------------------------------------------------------------
    def lesions_changed(self, flat: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        """Lesion voxels at ``flat`` went from ``before`` to ``after`` (already applied)."""
        flat = np.asarray(flat, np.intp).ravel()
        was = np.broadcast_to(np.asarray(before) != 0, flat.shape)
        now = np.broadcast_to(np.asarray(after) != 0, flat.shape)
        self._count(flat[now & ~was], +1)
        self._count(flat[was & ~now], -1)
        self.counter.update(flat, was, now)

    def lungs_changed(self, flat: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        """Lung labels at ``flat`` went from ``before`` to ``after`` (already applied)."""
        if self.lungs is None:
            return
        flat = np.asarray(flat, np.intp).ravel()
        old = _lung_codes(np.broadcast_to(np.asarray(before), flat.shape))
        new = _lung_codes(np.broadcast_to(np.asarray(after), flat.shape))
        self._lung_voxels += np.bincount(new, minlength=3) - np.bincount(old, minlength=3)
        lesion = np.take(self.lesions, flat) != 0
        if lesion.any():
            dense = self._dense_at(flat[lesion])
            self._per_class -= np.bincount(2 * old[lesion] + dense, minlength=6).reshape(3, 2)
            self._per_class += np.bincount(2 * new[lesion] + dense, minlength=6).reshape(3, 2)

    # -- result ------------------------------------------------------------------------------
    def quantification(self) -> Quantification:
        """The current numbers."""
        v = self.voxel_ml
        per_lung = self._per_class.sum(axis=1)
        density: dict[str, float] = {}
        if self.image is not None:
            density = {
                "ggo_ml": float(self._per_class[:, 0].sum() * v),
                "consolidation_ml": float(self._per_class[:, 1].sum() * v),
            }
        lungs = None
        if self.lungs is not None:
            lungs = (int(self._lung_voxels[RIGHT_LUNG]), int(self._lung_voxels[LEFT_LUNG]))
        return from_counts(
            v,
            int(per_lung.sum()),
            self.counter.n,
            lungs,
            (int(per_lung[RIGHT_LUNG]), int(per_lung[LEFT_LUNG])),
            **density,
        )


def _lung_codes(values: np.ndarray) -> np.ndarray:
    """Lung label values as codes 0 (not lung), :data:`RIGHT_LUNG`, :data:`LEFT_LUNG`."""
    v = np.asarray(values)
    return np.where((v == RIGHT_LUNG) | (v == LEFT_LUNG), v, 0).astype(np.intp)
