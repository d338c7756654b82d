"""Axis conventions between NIfTI files, numpy arrays and napari.

A NIfTI array is indexed ``(i, j, k)`` and its affine maps ``(i, j, k, 1)``
to RAS+ millimetres. In memory and in napari arrays are ``(z, y, x) =
(k, j, i)`` and world coordinates are ``(S, P, L)`` millimetres (LPS in
napari's reversed axis order), so napari's default 2D view of an axial slice
is the radiological view: anterior at the top, patient right on the left.

For inference and training, slices are presented in the canonical orientation
``SPL``: axis 0 runs inferior -> superior, axis 1 anterior -> posterior, axis
2 patient right -> left. :func:`to_canonical` and :func:`from_canonical`
move an array between its source index order and that orientation without
resampling (only transposes and flips), so a mask predicted in canonical
orientation lands back exactly on the source voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: 4x4 matrix reversing the three spatial axes (i, j, k) <-> (k, j, i).
REVERSE = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]],
    dtype=np.float64,
)
#: RAS+ -> LPS+ (flip x and y).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def napari_affine(nifti_affine: np.ndarray) -> np.ndarray:
    """4x4 affine mapping napari index ``(z, y, x)`` to world ``(S, P, L)`` mm."""
    a = np.asarray(nifti_affine, dtype=np.float64)
    return REVERSE @ RAS_TO_LPS @ a @ REVERSE


def nifti_affine_from_napari(affine_zyx: np.ndarray) -> np.ndarray:
    """Inverse of :func:`napari_affine`."""
    a = np.asarray(affine_zyx, dtype=np.float64)
    return RAS_TO_LPS @ REVERSE @ a @ REVERSE


def spacing_zyx(nifti_affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm in napari order ``(z, y, x)`` = (k, j, i) column norms."""
    norms = np.linalg.norm(np.asarray(nifti_affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(norms[2]), float(norms[1]), float(norms[0]))


def layer_geometry(nifti_affine: np.ndarray) -> dict:
    """napari layer kwargs ``scale``, ``translate`` and (if needed) ``affine``.

    ``world = affine @ (scale * index + translate)`` reproduces
    :func:`napari_affine`; ``affine`` holds only the direction cosines
    (rotation and flips) and is omitted when they are the identity.
    """
    n = napari_affine(nifti_affine)
    lin, t = n[:3, :3], n[:3, 3]
    scale = np.linalg.norm(lin, axis=0)
    scale[scale == 0] = 1.0
    direction = lin / scale
    geom: dict = {"scale": tuple(float(s) for s in scale)}
    if np.allclose(direction, np.eye(3), atol=1e-6):
        geom["translate"] = tuple(float(v) for v in t)
    else:
        d4 = np.eye(4)
        d4[:3, :3] = direction
        geom["affine"] = d4
        geom["translate"] = tuple(float(v) for v in np.linalg.solve(direction, t))
    return geom


@dataclass(frozen=True)
class Reorientation:
    """Transposes and flips that take a source ``(z, y, x)`` array to SPL.

    ``axes[n]`` is the source axis that becomes canonical axis ``n``;
    ``flips[n]`` says whether it is reversed after the transpose.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    @property
    def axial_axis(self) -> int:
        """Source array axis that runs inferior-superior (the axial slice index)."""
        return self.axes[0]

    def axial_index_to_canonical(self, z: int, n: int) -> int:
        """Slice index along the source axial axis -> canonical slice index."""
        return n - 1 - z if self.flips[0] else z

    def to_dict(self) -> dict:
        return {"axes": list(self.axes), "flips": list(self.flips)}


def reorientation(nifti_affine: np.ndarray) -> Reorientation:
    """The permutation/flips taking the source napari-order array to SPL.

    Uses the closest orthogonal orientation of the affine, so oblique scans
    map to their nearest canonical axes (no resampling).
    """
    import nibabel.orientations as nio

    # io_orientation gives, for each NIfTI array axis (i, j, k), the RAS axis
    # it maps to and its sign.
    ornt = nio.io_orientation(np.asarray(nifti_affine, dtype=np.float64))
    # napari axis a = 2 - nifti axis. Target canonical axes: 0 = S (RAS axis 2,
    # +), 1 = P (RAS axis 1, -), 2 = L (RAS axis 0, -).
    target = {2: (0, 1.0), 1: (1, -1.0), 0: (2, -1.0)}
    axes = [0, 0, 0]
    flips = [False, False, False]
    for nifti_axis in range(3):
        ras_axis, sign = int(ornt[nifti_axis, 0]), float(ornt[nifti_axis, 1])
        canon, want = target[ras_axis]
        axes[canon] = 2 - nifti_axis
        flips[canon] = sign != want
    return Reorientation(tuple(axes), tuple(flips))  # type: ignore[arg-type]


def to_canonical(data: np.ndarray, r: Reorientation) -> np.ndarray:
    """View of a source ``(z, y, x)`` array in SPL order (no copy)."""
    out = np.transpose(data, r.axes)
    for ax, f in enumerate(r.flips):
        if f:
            out = np.flip(out, axis=ax)
    return out


def from_canonical(data: np.ndarray, r: Reorientation) -> np.ndarray:
    """View of an SPL-ordered array back in the source ``(z, y, x)`` order."""
    out = data
    for ax, f in enumerate(r.flips):
        if f:
            out = np.flip(out, axis=ax)
    return np.transpose(out, np.argsort(r.axes))
