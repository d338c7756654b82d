"""Binary dilation, erosion and neighbour counts with a millimetre ball, done fast.

A ball of radius ``r`` mm on anisotropic voxels is an ellipsoid footprint (see
``ellipsoid_footprint``). Each of its rows along the last axis is a contiguous run
``[-w, w]``, so

    dilation = OR over rows (dz, dy) of  shift_(dz, dy)( row_dilation_w(region) )

where the row dilations for all widths cost ``2 * max(w)`` boolean passes. For the
radii used in editing (a few mm, a few dozen rows) this is ~10x faster than
``distance_transform_edt`` (about 7 vs 80 ns per voxel) and exactly equal to it;
for big balls the distance transform is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ._common import EPS_MM, ellipsoid_footprint

_MAX_ROWS = 150
"""Above this many footprint rows, the Euclidean distance transform is faster."""


class Ball:
    """Ball of ``radius_mm`` on voxels of ``spacing`` (mm), as rows of its footprint.

    Attributes:
        footprint: boolean ellipsoid, shape ``2 * reach + 1``.
        reach: half-size per axis in voxels.
        rows: ``{offset in the leading axes: half-width w along the last axis}``.
    """

    def __init__(self, radius_mm: float, spacing: Sequence[float]) -> None:
        self.radius_mm = float(radius_mm)
        self.spacing = tuple(float(s) for s in spacing)
        self.footprint = ellipsoid_footprint(self.radius_mm, self.spacing)
        self.reach = tuple((n - 1) // 2 for n in self.footprint.shape)
        last = self.reach[-1]
        self.rows: dict[tuple[int, ...], int] = {}
        for index in np.ndindex(*self.footprint.shape[:-1]):
            run = np.flatnonzero(self.footprint[index])
            if run.size:
                offset = tuple(i - r for i, r in zip(index, self.reach[:-1], strict=True))
                self.rows[offset] = int(run[-1]) - last

    @property
    def size(self) -> int:
        """Number of voxels in the footprint."""
        return int(self.footprint.sum())

    def _use_rows(self) -> bool:
        return len(self.rows) <= _MAX_ROWS

    def _padded_row_runs(self, padded: np.ndarray) -> dict[int, np.ndarray]:
        """``{w: OR of padded over [x - w, x + w] along the last axis}`` for needed w."""
        runs = {0: padded}
        current = padded
        for w in range(1, max(self.rows.values()) + 1):
            current = current.copy()
            current[..., w:] |= padded[..., :-w]
            current[..., :-w] |= padded[..., w:]
            runs[w] = current
        return runs

    def _rows_or(self, region: np.ndarray) -> np.ndarray:
        """OR of ``region`` over the footprint around each voxel; outside counts as False."""
        padded = np.pad(region, [(r, r) for r in self.reach])
        runs = self._padded_row_runs(padded)
        out = np.zeros(region.shape, dtype=bool)
        last = slice(self.reach[-1], self.reach[-1] + region.shape[-1])
        for offset, w in self.rows.items():
            lead = tuple(
                slice(r + d, r + d + n)
                for r, d, n in zip(self.reach[:-1], offset, region.shape[:-1], strict=True)
            )
            out |= runs[w][(*lead, last)]
        return out

    def dilate(self, region: np.ndarray) -> np.ndarray:
        """Voxels within ``radius_mm`` of a True voxel; outside the array counts as False."""
        if not region.any():
            return np.zeros_like(region, dtype=bool)
        if self._use_rows():
            return self._rows_or(region)
        distance = ndimage.distance_transform_edt(~region, sampling=self.spacing)
        return distance <= self.radius_mm + EPS_MM

    def erode(self, region: np.ndarray) -> np.ndarray:
        """True voxels farther than ``radius_mm`` from every False voxel.

        Outside the array counts as True (like ``binary_erosion(border_value=1)``).
        """
        if region.all():
            return region.copy()
        if self._use_rows():
            return ~self._rows_or(~region)
        distance = ndimage.distance_transform_edt(region, sampling=self.spacing)
        return distance > self.radius_mm + EPS_MM

    def count(self, region: np.ndarray) -> np.ndarray:
        """Number of True voxels under the footprint at each voxel (edge replicated)."""
        padded = np.pad(region, [(r, r) for r in self.reach], mode="edge")
        total = np.zeros(region.shape, dtype=np.int32)
        # Row sums of any width from one cumulative sum along the last axis.
        cumulative = np.zeros((*padded.shape[:-1], padded.shape[-1] + 1), dtype=np.int32)
        np.cumsum(padded, axis=-1, dtype=np.int32, out=cumulative[..., 1:])
        rx, nx = self.reach[-1], region.shape[-1]
        sums: dict[int, np.ndarray] = {}
        for w in set(self.rows.values()):
            upper = cumulative[..., rx + w + 1 : rx + w + 1 + nx]
            sums[w] = upper - cumulative[..., rx - w : rx - w + nx]
        for offset, w in self.rows.items():
            lead = tuple(
                slice(r + d, r + d + n)
                for r, d, n in zip(self.reach[:-1], offset, region.shape[:-1], strict=True)
            )
            total += sums[w][lead]
        return total
