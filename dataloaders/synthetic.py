"""Phantom "left atrium" volumes in exactly the LA layout, so training runs on a CPU in minutes.

    out_dir/train.list, out_dir/test.list                     case ids, one per line
    out_dir/2018LA_Seg_Training Set/<id>/mri_norm2.h5          'image' float32 (X,Y,Z), z-scored
                                                               'label' uint8 (X,Y,Z)
    out_dir/synthetic.json                                     the parameters (marks the set as ours)

Each case is drawn from np.random.default_rng([seed, case_index]), so the arrays are the same
bytes for the same parameters. The scene (all in voxel units, grown with the volume shape):
  - target ("atrium", label 1): a soft union of a rotated ellipsoid and 1-3 lobes whose
    boundary is roughened by a smooth random field: a large, compact blob;
  - a thick straight tube ("aorta") next to it: label 2 with num_classes=3, unlabeled otherwise;
  - distractors as bright as the target, never labeled: a hollow ellipsoidal shell with a
    dark core ("ventricle wall"), thin curvy tubes ("veins", half of them leaving the
    target's surface) and small spheres, added until they hold 1.7-2.1 times the target's
    voxel count. No intensity threshold separates them: they differ in shape and width;
  - a textured background, partial-volume blur, a smooth multiplicative bias field
    exp(a * smooth noise), Gaussian noise, then image = (image - mean) / std like LA.
On the default set (50 cases, seed 0, 64x64x48) the best single intensity threshold scores
Dice 0.45 pooled and at most 0.53 on any case, while a fixed shape rule (threshold, opening
with a radius-4 ball, largest component) scores 0.93: tests/test_synthetic.py checks both.

CLI: python -m dataloaders.synthetic --out data/Synthetic [--num_classes 3] [--seed 0]
                                     [--num_train 40 --num_test 10] [--shape 64 64 48]
"""
import argparse
import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from .datasets import LA_SUBDIR

PARAMS_FILE = 'synthetic.json'
FORMAT = 'dataloaders.synthetic/1'


class SyntheticDataError(ValueError):
    """The output folder cannot be used; the message is one line naming the folder."""
    user_error = True  # utils.cli.run_cli prints the message as one line, no traceback


# ----------------------------------------------------------------------------- geometry

def _smooth_field(rng, shape, sigma):
    """Gaussian-smoothed white noise rescaled to mean 0, std 1: (X,Y,Z) float32.

    Wide fields (sigma >= 4) are drawn on a grid `step` times coarser and upsampled
    linearly: the same smoothness for a fraction of the filtering cost.
    """
    step = max(1, int(sigma // 2))
    coarse = tuple(-(-s // step) + 1 for s in shape) if step > 1 else tuple(shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sigma / step,
                                    mode='wrap')
    for axis, size in enumerate(shape if step > 1 else ()):
        field = np.moveaxis(np.tensordot(_linear_upsampling(size, coarse[axis], step), field,
                                         axes=([1], [axis])), 0, axis)
    return (field - field.mean()) / (field.std() + 1e-12)


def _linear_upsampling(size, coarse_size, step):
    """(size, coarse_size) matrix W: fine sample i = linear interpolation at coarse i / step."""
    position = np.arange(size) / step
    low = np.floor(position).astype(int)
    weights = np.zeros((size, coarse_size), dtype=np.float32)
    weights[np.arange(size), low] = 1 - (position - low)
    weights[np.arange(size), np.minimum(low + 1, coarse_size - 1)] += position - low
    return weights


def _unit(rng):
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _rotation(rng):
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _ellipsoid(coords, center, radii, rotation):
    """Normalised squared distance q = sum_j ((R^T (x - c))_j / r_j)^2, < 1 inside. coords (3,X,Y,Z)."""
    local = np.einsum('ij,i...->j...', rotation, coords - np.reshape(center, (3, 1, 1, 1)))
    return np.einsum('j...,j->...', local ** 2, 1.0 / np.asarray(radii) ** 2)


def _line_distance(coords, point, direction):
    """Distance of every voxel to the infinite line point + t * direction (unit)."""
    d = coords - np.reshape(point, (3, 1, 1, 1))
    along = np.einsum('i...,i->...', d, direction)
    return np.sqrt(np.maximum((d ** 2).sum(0) - along ** 2, 0.0))


def _balls(points, radii, shape):
    """Union of balls |x - p_i| <= r_i: (X,Y,Z) bool. points (P,3) float, radii (P,).

    Only the voxels of a small cube around each point are tested, so a tube drawn as a
    chain of balls costs O(P r^3), not a distance transform of the whole volume.
    """
    mask = np.zeros(shape, dtype=bool)
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    radii = np.broadcast_to(np.asarray(radii, dtype=float), (len(points),))
    reach = int(np.ceil(radii.max())) if len(points) else 0  # |v - p| <= r, p in [f, f+1)
    span = np.arange(-reach, reach + 1)
    offsets = np.stack(np.meshgrid(span, span, span, indexing='ij'), -1).reshape(-1, 3)
    voxels = np.floor(points).astype(int)[:, None, :] + offsets[None]           # (P,O,3)
    inside = ((voxels - points[:, None, :]) ** 2).sum(-1) <= radii[:, None] ** 2
    inside &= ((voxels >= 0) & (voxels < np.array(shape))).all(-1)
    mask[tuple(voxels[inside].T)] = True
    return mask


def _target(rng, coords, shape):
    """Blob mask (X,Y,Z) bool, its center and main radii; redrawn until 2 voxels off the border."""
    size = np.array(shape, dtype=float)
    for _ in range(50):
        center = size * rng.uniform(0.4, 0.6, 3)
        radii = size * rng.uniform(0.16, 0.23, 3)
        parts = [_ellipsoid(coords, center, radii, _rotation(rng))]
        for _ in range(rng.integers(1, 4)):
            lobe_center = center + _unit(rng) * radii * rng.uniform(0.6, 0.9)
            parts.append(_ellipsoid(coords, lobe_center, radii * rng.uniform(0.45, 0.7, 3),
                                    _rotation(rng)))
        # soft minimum: lobes merge with a smooth neck instead of a crease
        q = -np.log(np.exp(-4.0 * np.stack(parts)).sum(0)) / 4.0
        q = q * (1.0 + 0.15 * _smooth_field(rng, shape, 3.0))
        mask = q < 1.0
        nz = np.nonzero(mask)
        if nz[0].size and all(a.min() >= 2 and a.max() <= s - 3 for a, s in zip(nz, shape)):
            return mask, center, radii
    raise RuntimeError(f"could not place a target blob in a {shape} volume; use a larger shape")


def _aorta(rng, coords, shape, center, radii):
    """A straight thick tube passing beside the target, roughly along z."""
    radius = min(shape) * rng.uniform(0.07, 0.1)
    angle = rng.uniform(0, 2 * np.pi)
    offset = (radii[:2].max() * 1.2 + radius + 2) * np.array([np.cos(angle), np.sin(angle)])
    xy = np.clip(center[:2] + offset, radius + 2, np.array(shape[:2]) - radius - 3)
    direction = np.array([*rng.normal(0, 0.3, 2), 1.0])
    return _line_distance(coords, np.array([*xy, center[2]]),
                          direction / np.linalg.norm(direction)) < radius


def _shell(rng, coords, shape, clearance, volume):
    """Hollow ellipsoid (wall, core) about the target's size, at least 2 voxels from it.

    clearance: distance to the target per voxel; volume: the target's voxel count.
    Its wall (3.5-5 voxels) must hold at least 30% of volume inside the image.
    """
    size = np.array(shape, dtype=float)
    scale = (3 * volume / (4 * np.pi)) ** (1 / 3)
    for _ in range(30):
        radii = scale * rng.uniform(0.8, 1.1, 3)
        outer = _ellipsoid(coords, size * rng.uniform(0.0, 1.0, 3), radii, _rotation(rng))
        core = outer < (1.0 - rng.uniform(3.5, 5.0) / radii.min()) ** 2
        wall = (outer < 1.0) & ~core
        if wall.sum() > 0.3 * volume and clearance[outer < 1.0].min() > 2:
            return wall, core
    empty = np.zeros(shape, dtype=bool)
    return empty, empty


def _vein(rng, shape, surface, target_center):
    """A thin curvy tube (radius 1.5-2.5); half of them leave the target's surface outwards.

    surface: (S,3) voxel indices of the target's boundary; target_center: (3,).
    """
    size = np.array(shape, dtype=float)
    if rng.random() < 0.5:
        start = surface[rng.integers(len(surface))].astype(float)
        direction = start - target_center
        direction = direction / (np.linalg.norm(direction) + 1e-12) + 0.5 * _unit(rng)
        t = np.arange(0.0, size.max())
    else:
        start = size * rng.uniform(0.0, 1.0, 3)
        direction = _unit(rng)
        t = np.arange(-size.max(), size.max())
    direction = direction / np.linalg.norm(direction)
    u = np.cross(direction, _unit(rng))
    u /= np.linalg.norm(u) + 1e-12
    v = np.cross(direction, u)
    amplitude, wavelength, phase = rng.uniform(1.5, 4.0), rng.uniform(20, 40), rng.uniform(0, 6.3)
    angle = 2 * np.pi * t / wavelength + phase
    points = (start + t[:, None] * direction + amplitude * np.sin(angle)[:, None] * u
              + 0.5 * amplitude * np.cos(angle)[:, None] * v)
    points = points[((points > -3) & (points < size + 2)).all(1)]
    return _balls(points, rng.uniform(1.5, 2.5), shape)


def _scene(rng, shape):
    """All structures of one phantom as bool masks (X,Y,Z), plus the image before z-scoring."""
    coords = np.indices(shape, dtype=np.float32)
    target, center, radii = _target(rng, coords, shape)
    clearance = ndimage.distance_transform_edt(~target)  # voxels to the nearest target voxel
    aorta = _aorta(rng, coords, shape, center, radii) & ~target
    wall, core = _shell(rng, coords, shape, clearance, target.sum())
    # veins and balls until the unlabeled bright voxels outnumber the target's by a drawn
    # ratio, so the best intensity threshold stays poor in every case, not only on average
    size = np.array(shape, dtype=float)
    veins = np.zeros(shape, dtype=bool)
    balls = np.zeros(shape, dtype=bool)
    surface = np.argwhere(target & ~ndimage.binary_erosion(target))
    target_center = np.argwhere(target).mean(0)
    budget = rng.uniform(1.7, 2.1) * target.sum()
    distractors = aorta | wall
    for step in range(60):
        if step % 2:
            point = size * rng.uniform(0.05, 0.95, 3)
            radius = rng.uniform(2.5, 4.5)
            if clearance[tuple(point.astype(int))] > radius + 2:
                balls |= _balls(point, radius, shape)
        else:
            veins |= _vein(rng, shape, surface, target_center)
        distractors |= veins | balls
        if np.count_nonzero(distractors & ~target) >= budget:
            break

    # intensities: the distractors at or a little above the target's level (thin ones more,
    # as the partial-volume blur dims them), the target mottled, the shell's core darker
    bright = rng.uniform(0.9, 1.1)
    texture = _smooth_field(rng, shape, 2.0)
    image = 0.3 + 0.05 * texture + 0.08 * _smooth_field(rng, shape, 6.0)
    image[core] = 0.1
    for structure, boost in ((aorta, 1.05), (wall, 1.15), (veins, 1.3), (balls, 1.3)):
        image[structure] = bright * boost * rng.uniform(0.97, 1.07)
    image[target] = bright * (1.0 + 0.05 * texture[target])
    image = ndimage.gaussian_filter(image, 0.7)  # partial volume at edges
    image *= np.exp(rng.uniform(0.05, 0.15) * _smooth_field(rng, shape, max(shape) / 2))
    image += rng.uniform(0.08, 0.14) * rng.standard_normal(shape, dtype=np.float32)
    return {'image': image, 'target': target, 'aorta': aorta, 'wall': wall, 'core': core,
            'veins': veins & ~target, 'balls': balls}


def make_phantom(rng, shape=(64, 64, 48), num_classes=2):
    """One phantom case. Returns (image float32 (X,Y,Z), z-scored; label uint8 (X,Y,Z)).

    The image does not depend on num_classes: with 3 classes the "aorta" tube is labeled 2,
    with 2 classes it is one more unlabeled distractor.
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes}")
    scene = _scene(rng, tuple(int(s) for s in shape))
    image = scene['image']
    image = ((image - image.mean()) / image.std()).astype(np.float32)
    label = scene['target'].astype(np.uint8)
    if num_classes == 3:
        label[scene['aorta']] = 2
    return image, label


# ----------------------------------------------------------------------------- dataset folder

def _params(num_train, num_test, shape, num_classes, seed):
    return {'format': FORMAT, 'num_train': int(num_train), 'num_test': int(num_test),
            'shape': [int(s) for s in shape], 'num_classes': int(num_classes), 'seed': int(seed)}


def _case_ids(params):
    ids = [f'phantom_{i:03d}' for i in range(params['num_train'] + params['num_test'])]
    return ids[:params['num_train']], ids[params['num_train']:]


def _read_params(out_dir):
    """The synthetic.json in out_dir, or None when there is none."""
    path = out_dir / PARAMS_FILE
    if not path.is_file():
        return None
    try:
        params = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SyntheticDataError(f"{path}: unreadable ({err}); remove it or choose another --out") from None
    if not isinstance(params, dict) or params.get('format') != FORMAT:
        raise SyntheticDataError(f"{path} was not written by this generator; refusing to touch {out_dir}")
    return params


def _is_complete(out_dir, params):
    train_ids, test_ids = _case_ids(params)
    for name, ids in (('train.list', train_ids), ('test.list', test_ids)):
        path = out_dir / name
        if not path.is_file() or path.read_text().split() != ids:
            return False
    return all((out_dir / LA_SUBDIR / i / 'mri_norm2.h5').is_file() for i in train_ids + test_ids)


def _matches(out_dir, params):
    """True when out_dir already holds the complete set these params make."""
    old = _read_params(out_dir) if out_dir.is_dir() else None
    return old == {**params, 'complete': True} and _is_complete(out_dir, params)


def _remove_synthetic(out_dir, params):
    """Delete exactly the files an earlier generation with these params wrote."""
    train_ids, test_ids = _case_ids(params)
    for case_id in train_ids + test_ids:
        case_dir = out_dir / LA_SUBDIR / case_id
        (case_dir / 'mri_norm2.h5').unlink(missing_ok=True)
        if case_dir.is_dir() and not any(case_dir.iterdir()):
            case_dir.rmdir()
    for name in ('train.list', 'test.list', PARAMS_FILE):
        (out_dir / name).unlink(missing_ok=True)
    h5_dir = out_dir / LA_SUBDIR
    if h5_dir.is_dir() and not any(h5_dir.iterdir()):
        h5_dir.rmdir()


def _write_json(path, params):
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(params, indent=1) + '\n')
    os.replace(tmp, path)


def _write_case(path, image, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    with h5py.File(tmp, 'w') as f:
        f.create_dataset('image', data=image, compression='gzip', compression_opts=1)
        f.create_dataset('label', data=label, compression='gzip', compression_opts=1)
    os.replace(tmp, path)


def make_synthetic_dataset(out_dir, num_train=40, num_test=10, shape=(64, 64, 48), num_classes=2,
                           seed=0, overwrite=False):
    """Write (or find) a phantom dataset in the LA layout; returns out_dir as a Path.

    Does nothing when out_dir already holds a complete set with the same parameters.
    Raises SyntheticDataError when out_dir holds anything else: a synthetic set with other
    parameters (replaced only with overwrite=True) or files that are not a synthetic set
    (never touched).
    """
    out_dir = Path(out_dir)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise SyntheticDataError(f"shape must be 3 sizes of at least 16 voxels, got {shape}")
    if num_train < 1 or num_test < 1:
        raise SyntheticDataError(f"need at least 1 train and 1 test case, got {num_train} and {num_test}")
    if num_classes not in (2, 3):
        raise SyntheticDataError(f"num_classes must be 2 or 3, got {num_classes}")
    params = _params(num_train, num_test, shape, num_classes, seed)

    if out_dir.exists() and not out_dir.is_dir():
        raise SyntheticDataError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        old = _read_params(out_dir)
        if old is None:
            raise SyntheticDataError(f"{out_dir} is not empty and holds no {PARAMS_FILE}: it is not "
                                     f"a synthetic set, refusing to write into it")
        if _matches(out_dir, params):
            return out_dir
        same = {k: v for k, v in old.items() if k != 'complete'} == params
        if not same and not overwrite:
            raise SyntheticDataError(f"{out_dir} holds a synthetic set made with other parameters "
                                     f"({_describe(old)}); pass overwrite=True (--overwrite) to replace it")
        _remove_synthetic(out_dir, old)

    out_dir.mkdir(parents=True, exist_ok=True)
    # written first, completed last: an interrupted run is recognised as ours and redone
    _write_json(out_dir / PARAMS_FILE, {**params, 'complete': False})
    train_ids, test_ids = _case_ids(params)
    for index, case_id in enumerate(train_ids + test_ids):
        image, label = make_phantom(np.random.default_rng([seed, index]), shape, num_classes)
        _write_case(out_dir / LA_SUBDIR / case_id / 'mri_norm2.h5', image, label)
    (out_dir / 'train.list').write_text(''.join(i + '\n' for i in train_ids))
    (out_dir / 'test.list').write_text(''.join(i + '\n' for i in test_ids))
    _write_json(out_dir / PARAMS_FILE, {**params, 'complete': True})
    return out_dir


def _describe(params):
    shape = 'x'.join(str(s) for s in params.get('shape', []))
    return (f"{params.get('num_train')} train + {params.get('num_test')} test, {shape}, "
            f"{params.get('num_classes')} classes, seed {params.get('seed')}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m dataloaders.synthetic',
        description='Generate phantom "left atrium" volumes in the LA folder layout '
                    f'(train.list, test.list, {LA_SUBDIR}/<id>/mri_norm2.h5).')
    parser.add_argument('--out', required=True, help='output folder, e.g. data/Synthetic')
    parser.add_argument('--num_train', type=int, default=40)
    parser.add_argument('--num_test', type=int, default=10)
    parser.add_argument('--shape', type=int, nargs=3, default=[64, 64, 48], metavar=('X', 'Y', 'Z'))
    parser.add_argument('--num_classes', type=int, default=2, choices=(2, 3),
                        help='3 labels a second structure (the "aorta" tube) as class 2')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true',
                        help='replace a synthetic set made with other parameters (never other data)')
    args = parser.parse_args(argv)
    params = _params(args.num_train, args.num_test, args.shape, args.num_classes, args.seed)
    try:
        found = _matches(Path(args.out), params)
        out = make_synthetic_dataset(args.out, args.num_train, args.num_test, args.shape,
                                     args.num_classes, args.seed, args.overwrite)
    except SyntheticDataError as err:
        sys.exit(f"synthetic: error: {err}")
    verb = 'found' if found else 'wrote'
    print(f"synthetic: {verb} {_describe(params)} in {out}")
    return 0


if __name__ == '__main__':
    main()
