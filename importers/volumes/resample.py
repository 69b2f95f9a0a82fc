"""Resample a volume to a target voxel spacing (scipy.ndimage)."""
import numpy as np
from scipy import ndimage


def resampled_shape(shape, spacing, target):
    """Voxels per axis at `target` mm: floor(size x spacing / target), at least 1, as the lineage's
    SimpleITK code (int(size * spacing / new_spacing)) computes it."""
    return tuple(max(int(n * s / t), 1) for n, s, t in zip(shape, spacing, target))


def resample(array, spacing, target, order=1, shape=None):
    """array (X,Y,Z) of voxel size `spacing` (mm) -> (array at voxel size `target`, target).

    Output voxel i sits at i x target mm, input voxel j at j x spacing mm (the first voxels coincide, as
    when SimpleITK resamples with the same origin). order: 1 linear or 3 cubic for images, 0 nearest for
    labels (values are kept, never blended). Outside the input the edge value is repeated. An image comes
    back float32, a label in its own dtype. shape: the output's voxels (default resampled_shape); going
    back to a scan's own grid needs its shape, which floor() cannot always recover.
    """
    spacing, target = np.asarray(spacing, dtype=float), np.asarray(target, dtype=float)
    shape = resampled_shape(array.shape, spacing, target) if shape is None else tuple(int(n) for n in shape)
    if shape == array.shape and np.allclose(spacing, target):
        return array, tuple(float(t) for t in target)
    source = array if order == 0 else array.astype(np.float32, copy=False)
    # cubic splines need the prefilter; linear and nearest ignore it
    out = ndimage.affine_transform(source, target / spacing, output_shape=shape, order=order, mode='nearest',
                                   prefilter=order > 1)
    return out, tuple(float(t) for t in target)


def resample_pair(image, label, spacing, target, order=1):
    """(image, label, spacing) at `target` mm: the image with `order` (1 linear, 3 cubic), the label
    nearest; target None keeps the volume as it is."""
    if target is None:
        return image, label, tuple(spacing)
    image, new_spacing = resample(image, spacing, target, order)
    label, _ = resample(label, spacing, target, order=0)
    return image, label, new_spacing
