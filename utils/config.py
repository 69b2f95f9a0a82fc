"""train.py's settings: the flags filled from a dataset's preset, then checked, before any work starts.
Every refusal is one line naming the flag and its value."""
import json
import math
from pathlib import Path

import torch

from utils.cli import UsageError
from utils.device import use_channels_last


def resolve(args, presets):
    """The settings of a run as a plain dict: every flag left unset (None) taken from the dataset's preset (the
    'la' row where that is silent too; --num_classes first from the data folder's import recipe), --channels_last
    resolved on the device --gpu picks, the default run folder, and the recipe itself (None without one)."""
    cfg = dict(vars(args))
    preset = {**presets['la'], **presets[cfg['dataset']]}
    if cfg['root_path'] is None and preset['root_path'] is None:
        raise UsageError(f'--dataset {cfg["dataset"]} has no default folder; pass --root_path')
    cfg['recipe'] = recipe_of(cfg['root_path'] or preset['root_path'])
    if cfg['num_classes'] is None and cfg['recipe'] is not None:
        cfg['num_classes'] = cfg['recipe'].get('num_classes')  # the import's classes, unless the flag is given
    for key, value in preset.items():
        if cfg.get(key) is None:
            cfg[key] = value
    cfg['patch_size'] = tuple(cfg['patch_size'])
    cfg['rampup'] = cfg['max_iterations'] if cfg['rampup'] is None else cfg['rampup']
    on_cuda = str(cfg['gpu']).strip().lower() not in ('-1', 'cpu') and torch.cuda.is_available()
    cfg['channels_last'] = use_channels_last(cfg['channels_last'], torch.device('cuda' if on_cuda else 'cpu'))
    if cfg['snapshot_path'] is None:
        cfg['snapshot_path'] = str(Path('model') / cfg['dataset'] /
                                   f'{cfg["exp"]}_{cfg["method"]}_{cfg["labelnum"]}labels')
    return cfg


def recipe_of(root_path):
    """The import recipe of a data folder (its dataset.json, written by the importers), None where it has none.
    It travels in the run's config and checkpoints, so that segment.py can apply it to a new scan."""
    path = Path(root_path) / 'dataset.json'
    if not path.is_file():
        return None
    try:
        recipe = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f'{path}: not a readable import recipe ({" ".join(str(e).split())})') from None
    if not isinstance(recipe, dict):
        raise UsageError(f'{path}: not an import recipe (a JSON object)')
    return recipe


def check_config(cfg):
    """Refuse flags that cannot train."""
    for name in ('max_iterations', 'batch_size', 'lr_step', 'save_every', 'log_every', 'contrast_samples',
                 'n_filters'):
        if cfg[name] < 1:
            raise UsageError(f'--{name} {cfg[name]} must be at least 1')
    if cfg['num_classes'] < 2:
        raise UsageError(f'--num_classes {cfg["num_classes"]} must be at least 2')
    for name in ('num_workers', 'rampup', 'val_every', 'image_every', 'base_lr', 'alpha_mc', 'lambda_reg',
                 'lambda_urps', 'lambda_cps', 'lambda_con', 'consistency', 'contrast_tau'):
        if not cfg[name] >= 0:  # also refuses NaN
            raise UsageError(f'--{name} {cfg[name]} must be zero or more')
    for name, low, high in (('uncertain_percent', 0, 100), ('conf_thresh', 0, 1), ('ema_decay', 0, 1)):
        if not low <= cfg[name] <= high:
            raise UsageError(f'--{name} {cfg[name]} must lie in {low}..{high}')
    classes = (cfg['recipe'] or {}).get('num_classes')
    if classes is not None and classes != cfg['num_classes']:
        raise UsageError(f'--num_classes {cfg["num_classes"]}, but {Path(cfg["root_path"]) / "dataset.json"} '
                         f'says the import made {classes} classes ({cfg["recipe"].get("labels")}); pass '
                         f'--num_classes {classes}, or import again with --label_values')
    if cfg['dataset'] == 'synthetic' and cfg['num_classes'] not in (2, 3):
        raise UsageError(f'--dataset synthetic makes 2 or 3 classes, not --num_classes {cfg["num_classes"]}')
    if cfg['tensorboard']:  # a missing package stops the run here, not at the first logged step
        from utils.tensorboard_log import summary_writer_class
        summary_writer_class()


def check_split(cfg, num_cases, world_size=1):
    """Refuse a labeled/unlabeled split or batch that the training list of num_cases cannot fill; where
    --labelnum is at fault, name the values that fit."""
    semi = cfg['method'] != 'sup'
    labeled_per_step = (cfg['labeled_bs'] if semi else cfg['batch_size']) * world_size
    unlabeled_per_step = (cfg['batch_size'] - cfg['labeled_bs']) * world_size if semi else 0
    low, high = labeled_per_step, num_cases - unlabeled_per_step
    fits = (f'--labelnum {low}' if low == high else f'--labelnum {low} to {high}' if low < high else None)
    advice = f'; with these batch flags the {num_cases} cases fit {fits}' if fits else ''
    if semi and not 0 < cfg['labeled_bs'] < cfg['batch_size']:
        raise UsageError(f'--labeled_bs {cfg["labeled_bs"]} must be at least 1 and smaller than '
                         f'--batch_size {cfg["batch_size"]} (the rest of a batch is unlabeled)')
    if not 0 < cfg['labelnum'] <= num_cases:
        raise UsageError(f'--labelnum {cfg["labelnum"]} must be between 1 and the {num_cases} cases '
                         f'of the training list{advice}')
    if semi and cfg['labelnum'] == num_cases:
        raise UsageError(f'--labelnum {num_cases} leaves no unlabeled volume; use --method sup for fully '
                         f'supervised training{advice}')
    if labeled_per_step > cfg['labelnum'] or unlabeled_per_step > num_cases - cfg['labelnum']:
        per_rank = f'--labeled_bs {cfg["labeled_bs"]}' if semi else f'--batch_size {cfg["batch_size"]}'
        raise UsageError(f'--labelnum {cfg["labelnum"]}: a step on {world_size} process(es) takes '
                         f'{labeled_per_step} labeled ({per_rank} each) and {unlabeled_per_step} unlabeled volumes, '
                         f'more than {cfg["labelnum"]} labeled of {num_cases} cases give{advice}, or lower '
                         f'--batch_size / --labeled_bs' + (' or --nproc_per_node' if world_size > 1 else ''))


# A run sized for a CPU: docs/results.md ("LA at CPU scale") gives its time and Dice.
CPU_RUN = dict(patch_size=(64, 64, 32), n_filters=4, max_iterations=800, lr_step=333, batch_size=4)


def cpu_cost_warning(cfg, presets, device):
    """Two lines for a run of its preset's full size (its patch, n_filters 16) that --gpu sent to the CPU because
    CUDA is missing: how much more work it is than a CPU-sized run, and that run's flags. None for any other run
    (CUDA, --gpu -1, the synthetic preset, a patch or width of the user's choice)."""
    if device.type != 'cpu' or str(cfg['gpu']).strip().lower() in ('-1', 'cpu') or cfg['dataset'] == 'synthetic':
        return None
    full = {**presets['la'], **presets[cfg['dataset']]}
    if tuple(cfg['patch_size']) != tuple(full['patch_size']) or cfg['n_filters'] != full['n_filters']:
        return None
    work = (cfg['max_iterations'] / CPU_RUN['max_iterations'] * cfg['batch_size'] / CPU_RUN['batch_size']
            * math.prod(cfg['patch_size']) / math.prod(CPU_RUN['patch_size'])
            * (cfg['n_filters'] / CPU_RUN['n_filters']) ** 2)  # convolutions: voxels x channels^2
    patch = 'x'.join(map(str, cfg['patch_size']))
    flags = ' '.join(f'--{k} {",".join(map(str, v)) if isinstance(v, tuple) else v}'
                     for k, v in CPU_RUN.items() if k != 'batch_size')
    return (f'warning: {cfg["max_iterations"]} iterations of {patch} patches at n_filters {cfg["n_filters"]} '
            f'are a GPU job: {work:.0f}x the work of a run sized for a CPU\n'
            f'warning: sized for a CPU (its time on one core: docs/results.md, "LA at CPU scale"): add {flags}; '
            f'or --gpu -1 to train the full size here')
