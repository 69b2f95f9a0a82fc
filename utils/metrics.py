"""Per-case segmentation metrics, numerically equal to medpy.metric.binary (0.5.2) dc/jc/hd95/asd.

numpy/scipy only (medpy is not a dependency). Definitions, for binary masks P (prediction) and G (ground truth):
    dice    = 2|P∩G| / (|P| + |G|)
    jaccard = |P∩G| / |P∪G|
    surface S(M) = M XOR erode(M), erosion with the 6-connected cross (medpy's connectivity=1), everything outside
                   the array counted as background (so masks touching the border have a surface there)
    d(A→B) = for every voxel of S(A), the Euclidean distance (scaled by `spacing`) to the nearest voxel of S(B)
    hd95 = 95th percentile (numpy's linear interpolation) of d(P→G) ∪ d(G→P)
    asd  = mean of d(P→G)            (medpy's asd is directed: result surface to reference surface)
Distances are in voxels unless a spacing is given. case_metrics gathers them into one case's row,
keep_largest_components is the optional largest-component post-processing.
"""

import numpy as np
from scipy import ndimage

METRICS = ('dice', 'jaccard', 'hd95', 'asd')


def _normalize_spacing(spacing, ndim):
    if spacing is None:
        return None
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,)) if np.ndim(spacing) == 0 \
        else np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (ndim,) or not np.all(spacing > 0):
        raise ValueError(f'spacing must be a positive number or {ndim} positive numbers, got {spacing.tolist()}')
    return tuple(float(s) for s in spacing)


def _crop_to_masks(pred, gt):
    # Every surface voxel and every distance lies inside the joint bounding box, and outside it both masks are
    # background, just as erosion treats the outside of the array: metrics on the crop are exact and far cheaper.
    union = pred | gt
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(np.any(union, axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(hit[0], hit[-1] + 1))
    box = tuple(box)
    return pred[box], gt[box]


def _surface(mask):
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=cross, iterations=1)


def surface_distances(pred, gt, spacing=None):
    """(d(P→G), d(G→P)): float64 arrays with one entry per surface voxel of P, resp. G. Both masks non-empty."""
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if not pred.any() or not gt.any():
        raise ValueError('surface distances need two non-empty masks')
    pred, gt = _crop_to_masks(pred, gt)
    spacing = _normalize_spacing(spacing, pred.ndim)
    sp, sg = _surface(pred), _surface(gt)
    # distance_transform_edt measures the distance to the nearest zero, so the target surface is inverted
    d_pg = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    d_gp = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    return d_pg, d_gp


def calculate_metric_percase(pred, gt, spacing=None, lineage_empty=False):
    """(dice, jaccard, hd95, asd) of the foreground (non-zero) of pred (X,Y,Z) against gt (X,Y,Z), as Python floats.

    An empty prediction gives (0, 0, nan, nan): its distances are undefined, and the caller leaves them out of the
    means and counts the case (docs/method.md, "Evaluation"). This also holds when gt is empty too (medpy would
    give Dice 1 there).
    lineage_empty=True gives the lineage's (0, 0, 0, 0) instead. A non-empty prediction with an empty gt gives
    (0, 0, nan, nan) in both modes (medpy raises there).
    """
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f'prediction shape {pred.shape} differs from ground-truth shape {gt.shape}')
    _normalize_spacing(spacing, pred.ndim)  # validate early, even for the cases that never measure a distance
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if n_pred == 0:
        return (0.0, 0.0, 0.0, 0.0) if lineage_empty else (0.0, 0.0, float('nan'), float('nan'))
    if n_gt == 0:
        return 0.0, 0.0, float('nan'), float('nan')
    inter = int(np.count_nonzero(pred & gt))
    dice = 2.0 * inter / (n_pred + n_gt)
    jaccard = inter / (n_pred + n_gt - inter)
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    hd95 = float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    asd = float(d_pg.mean())
    return dice, jaccard, hd95, asd


def case_metrics(pred, label, num_classes, spacing=None, lineage_empty=False):
    """Metrics of one case as a dict: foreground (non-zero) vs foreground, as the lineage and medpy's bool cast do,
    plus per-class columns '<metric>_<c>' and 'empty_<c>' when num_classes > 2. 'empty': no foreground predicted;
    'gt_empty': no foreground in the label (distances are then NaN)."""
    pred, label = np.asarray(pred), np.asarray(label)
    row = dict(zip(METRICS, calculate_metric_percase(pred, label, spacing, lineage_empty)))
    row['empty'] = not pred.any()
    row['gt_empty'] = not label.any()
    if num_classes > 2:
        for c in range(1, num_classes):
            values = calculate_metric_percase(pred == c, label == c, spacing, lineage_empty)
            row.update({f'{m}_{c}': v for m, v in zip(METRICS, values)})
            row[f'empty_{c}'] = not (pred == c).any()
    return row


def largest_connected_component(mask):
    """Boolean mask of the largest 26-connected component of mask != 0 (all-False when the mask is empty).

    26-connectivity because the lineage's getLargestCC calls skimage.measure.label with its default, full
    connectivity (= ndim). Ties go to the component met first in C order, as the lineage's argmax over bincount.
    """
    mask = np.asarray(mask) != 0
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def keep_largest_components(pred, num_classes):
    """Largest 26-connected component of each foreground class; everything else becomes background (0)."""
    out = np.zeros_like(pred)
    for c in range(1, num_classes):
        out[largest_connected_component(pred == c)] = c
    return out


def summarize(per_case_rows, keys=None):
    """Mean and population std (np.std, ddof=0) of each metric over cases.

    per_case_rows: list of dicts as case_metrics and utils.evaluation.test_all_case return ('dice', 'jaccard',
    'hd95', 'asd', optional per-class columns such as 'dice_2', and 'empty'). NaN values (undefined distances)
    are left out of that metric's mean/std; 'n' says how many cases entered it.
    Returns {'n_cases', 'n_empty', <key>: {'mean', 'std', 'n'}, ...}.
    """
    rows = list(per_case_rows)
    if keys is None:
        keys = [k for k in (rows[0] if rows else METRICS)
                if k in METRICS or any(k.startswith(m + '_') for m in METRICS)]
    out = {'n_cases': len(rows), 'n_empty': int(sum(bool(r.get('empty', False)) for r in rows))}
    for key in keys:
        values = np.asarray([r[key] for r in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size == 0:
            out[key] = {'mean': float('nan'), 'std': float('nan'), 'n': 0}
        else:
            out[key] = {'mean': float(values.mean()), 'std': float(values.std()), 'n': int(values.size)}
    return out
