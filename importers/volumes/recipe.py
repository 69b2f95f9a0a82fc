"""The import recipe: what an importer did to every case, kept as OUT/dataset.json beside the cases.

train.py copies it into the run's config and checkpoints; segment.py applies it to a new scan and inverts
its geometric steps (apply.py), so a label map lands on the scan it was computed from. Its keys
(docs/data.md, "dataset.json"):

    format_version  2 (1: the recipes written before the orientation key, still read: below)
    modality        'ct' (Hounsfield units) or 'mr'
    orientation     the axis codes every case was brought to, flips included (orient.py), e.g. 'LPS': the
                    orientation the networks see; segment.py brings a new scan to it
    spacing         [x, y, z] mm every case was resampled to; null: each case kept its own
    order           the image's interpolation in that resampling: 1 linear, 3 cubic (labels: nearest)
    intensity       the intensity steps in order (intensity.py): window or zscore, each on 'volume' or 'crop'
    crop            'nonzero' (the body's box, no label needed), 'label' (around the ground truth), 'none'
    crop_axes       'xy' or 'xyz'
    margin          voxels kept around the label (crop 'label'): an int, or [lo, hi] when each side's margin
                    was drawn from the integers in [lo, hi)
    min_size        [x, y, z]: the crop grown (crop.label_box's rule) and padded to at least this
    labels          {original value: class}, e.g. {"0": 0, "3": 1}; JSON keys are strings
    num_classes     C, the number of classes
    command         the command line that wrote the folder

format_version 1 has 'reorient' instead of 'orientation' (true: the axes were permuted to world x, y, z
order and never flipped; false: stored as read). It is still read and applied as written, with one warning
(legacy_warning): a new scan is then seen by the networks the way that import saw its cases, mirrored when
stored with an axis the other way. Any other version is refused in one line (re-import the data).
"""
import json
import math
from pathlib import Path

import numpy as np

from .crop import AXES
from .errors import ProblemList, VolumeError
from .intensity import STAGES
from .orient import orientation_problem
from .write import write_json

FORMAT_VERSION = 2
# the versions this code reads, and the key each has that the other lacks
VERSION_KEYS = {1: 'reorient', 2: 'orientation'}
RECIPE_FILE = 'dataset.json'
CROPS = ('nonzero', 'label', 'none')


def make_recipe(modality, orientation, spacing, order, intensity, crop, crop_axes, margin, min_size, values, command):
    """The recipe dict (module docstring) of an import; values: the original label value of each class,
    in class order. Only plain JSON types, so a checkpoint holding it loads with weights_only=True."""
    return {'format_version': FORMAT_VERSION, 'modality': modality, 'orientation': str(orientation),
            'spacing': None if spacing is None else [float(s) for s in spacing], 'order': int(order),
            'intensity': [dict(step) for step in intensity], 'crop': crop, 'crop_axes': crop_axes,
            'margin': margin if isinstance(margin, int) else [int(m) for m in margin],
            'min_size': [int(m) for m in min_size], 'labels': {f'{v:g}': c for c, v in enumerate(values)},
            'num_classes': len(values), 'command': command}


def _int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value, count, kind=(int, float)):
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _step_ok(step):
    if not isinstance(step, dict) or step.get('on') not in STAGES:
        return False
    if step.get('step') == 'window':
        return (set(step) == {'step', 'window', 'on'} and _numbers(step['window'], 2)
                and step['window'][0] < step['window'][1])
    return (step.get('step') == 'zscore' and set(step) == {'step', 'voxels', 'on'}
            and step['voxels'] in ('all', 'nonzero'))


def _labels_ok(labels):
    if not isinstance(labels, dict) or not all(_int(c) for c in labels.values()):
        return False
    try:
        [float(value) for value in labels]
    except ValueError:
        return False
    return sorted(labels.values()) == list(range(len(labels)))


# key -> (test of its value, what it must be)
CHECKS = {
    'modality': (lambda v: v in ('ct', 'mr'), '"ct" or "mr"'),
    'reorient': (lambda v: isinstance(v, bool), 'true or false'),
    'orientation': (lambda v: orientation_problem(v) is None, 'three axis codes, one of L/R, A/P and S/I (e.g. LPS)'),
    'spacing': (lambda v: v is None or (_numbers(v, 3) and min(v) > 0), 'null or three positive numbers'),
    'order': (lambda v: _int(v) and v in (1, 3), '1 or 3'),
    'intensity': (lambda v: isinstance(v, list) and all(_step_ok(s) for s in v), 'a list of window/zscore steps'),
    'crop': (lambda v: v in CROPS, ' or '.join(CROPS)),
    'crop_axes': (lambda v: v in tuple(AXES), ' or '.join(AXES)),
    'margin': (lambda v: (_int(v) and v >= 0) or (_numbers(v, 2, int) and 0 <= v[0] < v[1]), 'an int >= 0 or [lo, hi]'),
    'min_size': (lambda v: _numbers(v, 3, int) and min(v) >= 1, 'three positive ints'),
    'labels': (_labels_ok, 'a map of label values to the classes 0..C-1'),
    'num_classes': (lambda v: _int(v) and v >= 2, 'an int >= 2'),
    'command': (lambda v: isinstance(v, str), 'a string'),
}


def recipe_problems(recipe):
    """One line per problem of a recipe (module docstring); [] when it can be applied."""
    if not isinstance(recipe, dict):
        return [f'expected a JSON object, found {type(recipe).__name__}']
    version = recipe.get('format_version')
    if not _int(version) or version not in VERSION_KEYS:
        return [f'format_version {json.dumps(version)}: this code reads format_version '
                f'{" and ".join(map(str, VERSION_KEYS))} (re-import the data with this version of the code)']
    keys = [key for key in CHECKS if key not in VERSION_KEYS.values() or key == VERSION_KEYS[version]]
    missing = [key for key in keys if key not in recipe]
    if missing:
        return [f'missing {", ".join(missing)}']
    problems = [f'{key} {json.dumps(recipe[key])} is not {CHECKS[key][1]}' for key in keys
                if not CHECKS[key][0](recipe[key])]
    if not problems and len(recipe['labels']) != recipe['num_classes']:
        problems.append(f'labels map {len(recipe["labels"])} values but num_classes is {recipe["num_classes"]}')
    return problems


def legacy_warning(recipe, where):
    """The one warning line for a recipe of format_version 1 (module docstring), None for a current one."""
    if recipe is None or 'orientation' in recipe:
        return None
    how = 'permuted to x, y, z order but not flipped' if recipe.get('reorient') else 'taken in their stored order'
    return (f'warning: {where}: its import recipe predates the orientation key (format_version '
            f'{recipe.get("format_version")}): new scans are {how} as its cases were, so a scan stored with an axis '
            'reversed is seen mirrored; re-import the data and retrain to have every scan brought to one orientation')


def class_values(recipe):
    """int64 array: the original label value of each class, in class order (the inverse of 'labels')."""
    by_class = sorted(recipe['labels'], key=recipe['labels'].get)
    return np.array([int(float(v)) for v in by_class], dtype=np.int64)


def write_recipe(folder, recipe):
    write_json(Path(folder) / RECIPE_FILE, recipe)


def read_recipe(folder):
    """The recipe of a data folder (its dataset.json), None when it has none. Raises VolumeError naming the
    file when it is unreadable, ProblemList (one line per problem) when it is not a recipe this code applies."""
    path = Path(folder) / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        recipe = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise VolumeError(f'{path}: not a readable recipe ({" ".join(str(err).split())})') from None
    problems = recipe_problems(recipe)
    if problems:
        raise ProblemList([f'{path}: {problem}' for problem in problems])
    return recipe
