"""Segment new scans with a trained pair: a label map per volume, no metrics (docs/data.md, "A new scan").

    python segment.py --checkpoint RUN/final.pth --input scan.nii.gz       # through the data's import recipe
    python segment.py --checkpoint RUN/final.pth --input scans/ --save_png
    python segment.py --labelnum 8 --input volumes/                        # the run folder of train.py
    python segment.py --vnet_ckpt vnet.pth --input volumes/                # a state dict of the published code

Writes <out_dir>/predictions_input/<name>_pred.* (and, with --save_png, pictures_input/<name>.png), once every
volume is segmented; out_dir defaults to the run folder. The architecture and the intensity normalisation
come from the checkpoint, and so does the import recipe of the data it was trained on (dataset.json): a
NIfTI, NRRD or DICOM scan goes through it: brought to the orientation the networks were trained in (flips
included), so a scan gives one map however its file stores it, and its map has the scan's own grid, affine and
label values. Its pictures are drawn in that orientation, the patient's directions on their edges.
"""
import sys
from pathlib import Path

from tqdm import tqdm

from dataloaders.transforms import normalize_intensity
from importers.volumes import (StagingDir, label_values, legacy_warning, modality_problem, recipe_problems,
                               scan_problem, to_network_grid, to_scan_grid, to_stored)
from importers.volumes.apply import SKIP_FLAG, SKIP_HINT
from importers.volumes.orient import reorient
from utils.cli import OneLineParser, UsageError, run_cli
from utils.inference import test_single_case
from utils.metrics import keep_largest_components
from utils.trained import (PictureWriter, UniqueNames, add_trained_args, open_trained, parse_spacing, read_flags,
                           require_matplotlib)
from utils.volume_io import (input_files, is_scan, label_dtype, label_map_suffix, nibabel_or_none,
                             read_scan_input, read_volume, spacing_affine, volume_suffix, write_label_map)


def build_parser():
    p = OneLineParser(description=__doc__.split('\n')[0])
    add_trained_args(p)
    g = p.add_argument_group('scans')
    g.add_argument('--input', required=True,
                   help='a volume or a folder of volumes (.h5 with "image", .npy, .nii/.nii.gz; with the '
                        "checkpoint's import recipe also .nrrd and a DICOM series folder). A scan goes through "
                        "the recipe: its map, <name>_pred.nii.gz, has the scan's shape, affine and label values")
    g.add_argument('--series', default=None, metavar='UID',
                   help='--input is a DICOM folder holding several CT series: read the one with this '
                        'SeriesInstanceUID')
    g.add_argument('--spacing', type=parse_spacing, default=None,
                   help='x,y,z mm per voxel of .h5 and .npy volumes: the affine of their NIfTI maps, the pictures')
    g.add_argument('--lcc', action='store_true', help='keep the largest connected component of each class')
    g.add_argument(SKIP_FLAG, action='store_true',
                   help="segment a scan whose values do not look like the recipe's modality (a CT without air, an MR "
                        'with many voxels below -200), with a warning instead of the refusal')
    g = p.add_argument_group('output')
    g.add_argument('--out_dir', default=None, help='default: the run folder (the checkpoint\'s folder)')
    g.add_argument('--save_png', action='store_true',
                   help='one PNG per volume in pictures_input/: three slices through the prediction\'s centre, '
                        'the prediction outlined (needs matplotlib)')
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument('--nifti', action='store_true',
                     help='maps of .h5 and .npy volumes as .nii.gz (needs nibabel; default: the volume\'s format)')
    fmt.add_argument('--h5', action='store_true', help='maps of .h5 and .npy volumes as .h5')
    g.add_argument('--no_progress', action='store_true', help='no progress bar')
    return p


def parse_args(argv=None):
    """The flags as a dict; None where a setting is to come from the checkpoint."""
    return read_flags(build_parser(), argv)


def check_inputs(sources, recipe, checkpoint, nib, series=None):
    """Refuse, before any work, an --input volume that cannot be segmented with this checkpoint."""
    if series is not None and not any(path.is_dir() for path in sources):
        raise UsageError(f'--series {series}: --input {sources[0]} is no DICOM series folder')
    for path in sources:
        if recipe is None and (path.is_dir() or volume_suffix(path) == '.nrrd'):
            raise UsageError(f'--input {path}: NRRD and DICOM scans are read through the import recipe (dataset.json) '
                             f'of the data a checkpoint was trained on, and {checkpoint} holds none')
    if recipe is not None and nib is None and any(is_scan(p) for p in sources):
        raise UsageError(f'--input {sources[0]}: the label map of a scan is written as NIfTI, which needs nibabel: '
                         'pip install nibabel')


def checked_scan(path, recipe, series=None, skip_modality_check=False):
    """(the scan as stored, float32; its affine) of a NIfTI/NRRD file or DICOM folder, refused in one line naming
    it when the recipe cannot be applied (apply.scan_problem); a modality mismatch passes with a warning line
    when skip_modality_check (SKIP_FLAG) is given."""
    image, affine, _ = read_scan_input(path, series)
    problem = scan_problem(image, recipe, affine, check_modality=False)
    mismatch = None if problem else modality_problem(image, recipe['modality'])
    if problem or (mismatch and not skip_modality_check):
        raise UsageError(f'--input {path}: {problem or mismatch + SKIP_HINT}')
    if mismatch:
        tqdm.write(f'warning: --input {path}: {mismatch}; segmented anyway ({SKIP_FLAG})', file=sys.stderr)
    return image, affine


def segment_scan(path, recipe, segment, normalize, lcc, series=None, skip_modality_check=False):
    """(label map as the scan stores it, the scan's affine, picture) of a scan through the import recipe: onto
    the network's grid, the sliding window segment(image) -> (label, scores), and back. normalize: the
    checkpoint's --normalize, applied after the recipe as training applied it to the cases. picture: (image,
    map, voxel size) on the scan's grid in the networks' orientation, what --save_png draws."""
    image, affine = checked_scan(path, recipe, series, skip_modality_check)
    network_image, grid = to_network_grid(image, affine, recipe, name=str(path))
    _, score = segment(normalize_intensity(network_image, normalize))
    classes = to_scan_grid(score, grid, recipe)
    if lcc:
        classes = keep_largest_components(classes, recipe['num_classes'])
    picture = (reorient(image, grid.ornt), label_values(classes, recipe), grid.spacing)
    return to_stored(classes, grid, recipe), affine, picture


def segment_volume(path, cfg, segment):
    """(label map, image) of a volume segmented as stored (.h5 or .npy: a case already imported; any volume
    of a checkpoint without a recipe), normalised as the networks were trained."""
    image, affine = read_volume(path)
    mean, std = float(image.mean()), float(image.std())
    image = normalize_intensity(image, cfg['normalize'])
    if cfg['normalize'] == 'none' and (abs(mean) > 1.0 or not 0.2 < std < 5.0):
        tqdm.write(f'note: {path.name}: mean {mean:.3g}, std {std:.3g}, but the networks were trained on '
                   f'z-scored volumes; pass --normalize zscore if it is not normalised', file=sys.stderr)
    pred, _ = segment(image)
    if cfg['lcc']:
        pred = keep_largest_components(pred, cfg['num_classes'])
    return pred.astype(label_dtype(cfg['num_classes'])), image, affine


def main(argv=None):
    cfg = parse_args(argv)
    if cfg['save_png']:
        require_matplotlib()
    nib = nibabel_or_none()
    if cfg['nifti'] and nib is None:
        raise UsageError('--nifti needs nibabel, which is not installed: pip install nibabel')
    nets, info, window, _ = open_trained(cfg)
    out_dir = Path(cfg['out_dir'] if cfg['out_dir'] is not None else info['snapshot_path'])

    recipe = info['recipe']
    if recipe is not None:
        problems = recipe_problems(recipe)
        if not problems and recipe['num_classes'] != cfg['num_classes']:
            problems = [f'num_classes {recipe["num_classes"]}, but the networks have {cfg["num_classes"]}']
        if problems:
            raise UsageError(f'{info["checkpoint"]}: its import recipe (the data folder\'s dataset.json): '
                             f'{problems[0]}')
    sources = input_files(cfg['input'], series=recipe is not None)
    check_inputs(sources, recipe, info['checkpoint'], nib, cfg['series'])
    warning = legacy_warning(recipe, info['checkpoint'])
    if warning:
        print(warning, file=sys.stderr)
    orientation = recipe.get('orientation') if recipe is not None else None
    if recipe is not None and recipe['crop'] == 'label' and any(is_scan(p) for p in sources):
        print('note: the import recipe crops around the ground-truth label, which a new scan lacks: the whole scan '
              'is segmented', file=sys.stderr)

    def segment(image):
        return test_single_case(list(nets.values()), image, **window)
    names = UniqueNames()
    with StagingDir(out_dir) as stage:
        folder = stage.path / 'predictions_input'
        folder.mkdir()
        pictures = PictureWriter(stage.path / 'pictures_input', cfg['spacing']) if cfg['save_png'] else None
        for path in tqdm(sources, desc='segment', unit='volume', disable=cfg['no_progress']):
            stem = path.name if path.is_dir() else path.name[:-len(volume_suffix(path))]
            if recipe is not None and is_scan(path):
                pred, affine, (image, shown, spacing) = segment_scan(
                    path, recipe, segment, cfg['normalize'], cfg['lcc'], cfg['series'], cfg['skip_modality_check'])
                kind, codes = '.nii.gz', orientation
            else:
                pred, image, affine = segment_volume(path, cfg, segment)
                kind = label_map_suffix(volume_suffix(path), cfg['nifti'], cfg['h5'])
                affine, spacing, shown, codes = (affine if affine is not None else spacing_affine(cfg['spacing']),
                                                 None, pred, None)
            write_label_map(pred, folder / (names(stem + '_pred', kind) + kind), nib, affine, source=path)
            if pictures is not None:
                pictures(stem, shown, image, None, spacing=spacing, orientation=codes)
        stage.commit()
    print(f'wrote {len(sources)} label map(s) to {out_dir / "predictions_input"}'
          + (f', pictures to {out_dir / "pictures_input"}' if pictures else ''))


if __name__ == '__main__':
    run_cli(main)
