"""Semi-supervised 3D segmentation with a pair of V-Nets (Lu et al., ISBI 2025; arXiv 2505.17690).

    python train.py --labelnum 8 --gpu 0                      # the paper's LA setting
    python train.py --dataset synthetic --gpu -1              # CPU quick start on phantoms
    python train.py --method mt   |   --method sup            # the baselines
    torchrun --nproc_per_node 2 train.py ...                  # several GPUs (DDP)

Reads top to bottom as METHOD.md: flags, data from the two-stream sampler, the two
networks and their SGD optimisers, then one loop computing every loss term by name.
"""
import copy
import json
import math
import sys
import time
from argparse import ArgumentDefaultsHelpFormatter
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataloaders import (NORMALIZE_MODES, Compose, H5Dataset, IterationBatchSampler, LabeledBatchSampler,
                         NormalizeIntensity, RandomCrop, RandomRotFlip, RandomScaleIntensity, ToTensor,
                         TwoStreamBatchSampler)
from losses import (FILTER_MODES, confident_disagreement, cosine_consistency_loss, cps_dice_loss, cps_loss,
                    cross_pseudo_label, mutual_correction_loss, prototype_contrastive_loss, softmax_mse_loss,
                    supervised_loss, urps_loss)
from networks import ResNet34VNet, VNet
from utils.checkpoint import save_checkpoint
from utils.cli import OneLineParser, run_cli
from utils.config import PRESETS, add_common_args, amp_dtype, env_rank, resolve, select_device
from utils.inference import test_single_case
from utils.metrics import calculate_metric_percase
from utils.ramps import sigmoid_rampup
from utils.resume import find_resume, restore
from utils.run_log import IterationCSV, setup_logger
from utils.seeding import rng_state, seed_everything, seed_worker, step_generator
from utils.signals import StopSignals

# Settings that define a run: a checkpoint only resumes a run with the same ones.
RUN_KEYS = ('dataset', 'method', 'labelnum', 'max_iterations', 'batch_size', 'labeled_bs', 'base_lr',
            'lr_step', 'seed', 'patch_size', 'n_filters', 'num_classes', 'normalize', 'intensity_scale', 'rotflip',
            'rampup', 'alpha_mc', 'lambda_reg', 'lambda_urps', 'lambda_cps', 'lambda_con', 'uncertain_percent',
            'filter', 'anneal_uncertain', 'cps_dice', 'conf_thresh', 'contrast_tau', 'contrast_samples',
            'ema_decay', 'consistency')

# The per-iteration CSV columns of each method.
COLUMNS = {
    'dual': ['lr', 'loss', 'sup_a', 'sup_b', 'dice_a', 'dice_b', 'winner', 'mc_a', 'mc_b', 'reg', 'urps',
             'cps_a', 'cps_b', 'con', 'lambda_con', 'uncertain_percent', 'reliable', 'pseudo_fg', 'reliable_fg'],
    'mt': ['lr', 'loss', 'sup', 'dice', 'consistency', 'consistency_weight'],
    'sup': ['lr', 'loss', 'sup', 'dice'],
}


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split('\n')[0], formatter_class=ArgumentDefaultsHelpFormatter)
    add_common_args(p)
    p.add_argument('--max_iterations', type=int, default=None, help='T (preset; 6000 for LA)')
    p.add_argument('--batch_size', type=int, default=None, help='B volumes per step (4)')
    p.add_argument('--labeled_bs', type=int, default=None, help='labeled volumes per step (2)')
    p.add_argument('--base_lr', type=float, default=0.01)
    p.add_argument('--lr_step', type=int, default=None, help='lr x0.1 every this many iterations (2500)')
    p.add_argument('--deterministic', type=int, default=1, choices=[0, 1])
    p.add_argument('--num_workers', type=int, default=2)
    p.add_argument('--rotflip', action='store_true', help="add the lineage's RandomRotFlip augmentation")
    p.add_argument('--normalize', choices=NORMALIZE_MODES, default='zscore',
                   help='per-volume intensity normalisation at load, also applied by test.py (none: as stored)')
    p.add_argument('--intensity_scale', type=float, default=1.0,
                   help='augmentation: multiply each sample by s, log-uniform in [1/x, x] (1: off)')
    p.add_argument('--rampup', type=int, default=None, help='ramp-up length in iterations (T)')
    g = p.add_argument_group('loss weights (0 turns a term off)')
    g.add_argument('--alpha_mc', type=float, default=0.5, help='mutual correction on labeled data')
    g.add_argument('--lambda_reg', type=float, default=1.0, help='cosine consistency')
    g.add_argument('--lambda_urps', type=float, default=1.0, help='uncertainty-rectified pseudo supervision')
    g.add_argument('--lambda_cps', type=float, default=1.0, help='entropy-filtered cross pseudo-labels')
    g.add_argument('--lambda_con', type=float, default=0.1, help='prototype contrastive (ramped)')
    g.add_argument('--uncertain_percent', type=float, default=20.0, help='L_cps: share of uncertain voxels')
    g.add_argument('--filter', choices=FILTER_MODES, default='classwise',
                   help='L_cps entropy filter: percentile over the batch (global, the paper\'s), per predicted '
                        'class (classwise), or none')
    g.add_argument('--anneal_uncertain', action='store_true',
                   help='L_cps: the uncertain share decays linearly to 0 over the run (U2PL)')
    g.add_argument('--cps_dice', action='store_true', help='L_cps: add a soft Dice against yhat over R')
    g.add_argument('--conf_thresh', type=float, default=0.6)
    g.add_argument('--contrast_tau', type=float, default=0.1)
    g.add_argument('--contrast_samples', type=int, default=2048)
    g = p.add_argument_group('mean teacher (--method mt)')
    g.add_argument('--ema_decay', type=float, default=0.99)
    g.add_argument('--consistency', type=float, default=0.1)
    g = p.add_argument_group('run control')
    g.add_argument('--save_every', type=int, default=1000, help='checkpoint period in iterations')
    g.add_argument('--log_every', type=int, default=50, help='log.txt line period in iterations')
    g.add_argument('--resume', default=None, help='checkpoint path, or auto for the run folder\'s newest')
    g.add_argument('--val_list', default=None, help='list file for periodic validation (never the test list)')
    g.add_argument('--val_every', type=int, default=0, help='validation period in iterations (0: off)')
    g.add_argument('--amp', action='store_true',
                   help='mixed precision: float16 autocast and a gradient scaler on CUDA, bfloat16 autocast on the CPU')
    g.add_argument('--channels_last', action='store_true',
                   help='channels_last_3d memory format for networks and inputs (faster 3D convolutions on CPU)')
    g.add_argument('--sync_bn', action='store_true', help='SyncBatchNorm under torchrun (default: per-GPU BN)')
    g.add_argument('--trace_samples', action='store_true', help='each rank records the samples it trains on')
    args = p.parse_args(argv)
    cfg = resolve(args)
    if cfg['rampup'] is None:
        cfg['rampup'] = cfg['max_iterations']
    return cfg


def check_config(cfg, num_cases, world_size=1):
    """Refuse settings that cannot train, before any work starts."""
    semi = cfg['method'] != 'sup'
    for name in ('max_iterations', 'batch_size', 'lr_step', 'save_every', 'log_every', 'contrast_samples'):
        if cfg[name] < 1:
            raise SystemExit(f'error: --{name} {cfg[name]} must be at least 1')
    if not cfg['intensity_scale'] >= 1:
        raise SystemExit(f'error: --intensity_scale {cfg["intensity_scale"]} must be at least 1 (1: off)')
    for name in ('num_workers', 'rampup', 'val_every', 'base_lr', 'alpha_mc', 'lambda_reg', 'lambda_urps',
                 'lambda_cps', 'lambda_con', 'consistency', 'contrast_tau'):
        if not cfg[name] >= 0:  # also refuses NaN
            raise SystemExit(f'error: --{name} {cfg[name]} must be zero or more')
    for name, low, high in (('uncertain_percent', 0, 100), ('conf_thresh', 0, 1), ('ema_decay', 0, 1)):
        if not low <= cfg[name] <= high:
            raise SystemExit(f'error: --{name} {cfg[name]} must lie in {low}..{high}')
    if not 0 < cfg['labelnum'] <= num_cases:
        raise SystemExit(f'error: --labelnum {cfg["labelnum"]} must be between 1 and the {num_cases} cases '
                         f'of the training list')
    if semi and cfg['labelnum'] == num_cases:
        raise SystemExit(f'error: --labelnum {num_cases} leaves no unlabeled volume; '
                         f'use --method sup for fully supervised training')
    if semi and not 0 < cfg['labeled_bs'] < cfg['batch_size']:
        raise SystemExit(f'error: --labeled_bs {cfg["labeled_bs"]} must be at least 1 and smaller than '
                         f'--batch_size {cfg["batch_size"]} (the rest of a batch is unlabeled)')
    if semi and cfg['labelnum'] < cfg['labeled_bs']:
        raise SystemExit(f'error: --labelnum {cfg["labelnum"]} is smaller than --labeled_bs {cfg["labeled_bs"]}')
    if not semi and cfg['labelnum'] < cfg['batch_size']:
        raise SystemExit(f'error: --labelnum {cfg["labelnum"]} is smaller than --batch_size {cfg["batch_size"]}')
    # under torchrun every rank takes its own slice of a global batch from each stream
    labeled_per_step = (cfg['labeled_bs'] if semi else cfg['batch_size']) * world_size
    unlabeled_per_step = (cfg['batch_size'] - cfg['labeled_bs']) * world_size if semi else 0
    if labeled_per_step > cfg['labelnum'] or unlabeled_per_step > num_cases - cfg['labelnum']:
        raise SystemExit(f'error: a step on {world_size} process(es) takes {labeled_per_step} labeled and '
                         f'{unlabeled_per_step} unlabeled volumes, more than --labelnum {cfg["labelnum"]} of '
                         f'{num_cases} cases gives: lower --batch_size / --labeled_bs or --nproc_per_node')


def build_dataset(cfg, split='train', list_file=None, transform=None):
    return H5Dataset(cfg['root_path'], split=split, list_file=list_file, transform=transform,
                     pattern=cfg['pattern'] or PRESETS[cfg['dataset']]['pattern'], num_classes=cfg['num_classes'])


def build_networks(cfg, device):
    """dual: A = V-Net, B = ResNet-34 V-Net; sup: a V-Net; mt: a V-Net student and its EMA teacher."""
    kw = dict(n_channels=1, n_classes=cfg['num_classes'], n_filters=cfg['n_filters'],
              normalization='batchnorm', has_dropout=True)
    nets = {'net_a': VNet(**kw)}
    if cfg['method'] == 'dual':
        nets['net_b'] = ResNet34VNet(**kw)
    if cfg['method'] == 'mt':
        nets['ema'] = copy.deepcopy(nets['net_a'])
        for p in nets['ema'].parameters():
            p.requires_grad_(False)
    return {name: net.to(device).train() for name, net in nets.items()}


def dual_losses(out_a, out_b, label, cfg, it, generator, world_size):
    """Every term of METHOD.md's training iteration for one batch; returns (total, record)."""
    lb = cfg['labeled_bs']
    (logits_a, feat_a), (logits_b, feat_b) = out_a, out_b
    logits_a, logits_b = logits_a.float(), logits_b.float()
    prob_a, prob_b = F.softmax(logits_a, dim=1), F.softmax(logits_b, dim=1)
    zero = logits_a.new_zeros(())

    # 1. supervised loss on the labeled part, per network
    sup_a, dice_a = supervised_loss(logits_a[:lb], label[:lb])
    sup_b, dice_b = supervised_loss(logits_b[:lb], label[:lb])

    # 2. competition: the lower supervised Dice loss wins (ties: A), agreed across ranks
    dice_pair = torch.stack([dice_a, dice_b]).detach()
    if world_size > 1:
        dist.all_reduce(dice_pair)
        dice_pair /= world_size
    a_wins = bool(dice_pair[0] <= dice_pair[1])

    # 3. mutual correction where exactly one network is confident (labeled part)
    mc_a = mc_b = zero
    if cfg['alpha_mc'] > 0:
        mask = confident_disagreement(prob_a[:lb], prob_b[:lb], cfg['conf_thresh'])
        mc_a = mutual_correction_loss(prob_a[:lb], label[:lb], mask)
        mc_b = mutual_correction_loss(prob_b[:lb], label[:lb], mask)

    # 4. cosine consistency on the whole batch
    reg = cosine_consistency_loss(prob_a, prob_b) if cfg['lambda_reg'] > 0 else zero

    # 5. uncertainty-rectified pseudo supervision: the winner teaches the loser
    teacher_prob, student_logits = (prob_a, logits_b) if a_wins else (prob_b, logits_a)
    urps = urps_loss(student_logits, teacher_prob) if cfg['lambda_urps'] > 0 else zero

    # 6. entropy-filtered cross pseudo-labels on the unlabeled part (term 7 uses them too)
    pseudo = reliable = None
    uncertain = cfg['uncertain_percent'] * (1 - it / cfg['max_iterations'] if cfg['anneal_uncertain'] else 1)
    if cfg['lambda_cps'] > 0 or cfg['lambda_con'] > 0:
        pseudo, reliable = cross_pseudo_label(prob_a[lb:], prob_b[lb:], uncertain, cfg['filter'])
    cps_a = cps_b = zero
    if cfg['lambda_cps'] > 0:
        cps_a = cps_loss(logits_a[lb:], pseudo, reliable)
        cps_b = cps_loss(logits_b[lb:], pseudo, reliable)
        if cfg['cps_dice']:
            cps_a = cps_a + cps_dice_loss(prob_a[lb:], pseudo, reliable)
            cps_b = cps_b + cps_dice_loss(prob_b[lb:], pseudo, reliable)

    # 7. prototype contrast on the loser's features, ramped in over the run
    lambda_c = cfg['lambda_con'] * sigmoid_rampup(it, cfg['rampup'])
    con = zero
    if cfg['lambda_con'] > 0:
        loser_feat, loser_prob = (feat_b, prob_b) if a_wins else (feat_a, prob_a)
        con = prototype_contrastive_loss(loser_feat[lb:], loser_prob[lb:], pseudo, reliable,
                                         cfg['contrast_tau'], cfg['contrast_samples'], generator)

    # 8. the total
    total = (sup_a + sup_b + cfg['alpha_mc'] * (mc_a + mc_b) + cfg['lambda_cps'] * (cps_a + cps_b)
             + cfg['lambda_reg'] * reg + cfg['lambda_urps'] * urps + lambda_c * con)
    record = dict(loss=total, sup_a=sup_a, sup_b=sup_b, dice_a=dice_a, dice_b=dice_b, mc_a=mc_a, mc_b=mc_b,
                  reg=reg, urps=urps, cps_a=cps_a, cps_b=cps_b, con=con, reliable=zero, pseudo_fg=zero,
                  reliable_fg=zero)
    if reliable is not None:  # is R the class mix of yhat? (a filter can starve R of foreground)
        fg = pseudo > 0
        record.update(reliable=reliable.float().mean(), pseudo_fg=fg.float().mean(),
                      reliable_fg=(fg & reliable).sum() / reliable.sum().clamp_min(1))
    return total, record, {'winner': 'A' if a_wins else 'B', 'lambda_con': lambda_c, 'uncertain_percent': uncertain}


def mt_losses(student_out, teacher_logits, label, cfg, it):
    """Mean teacher (UA-MT style): supervised loss + ramped softmax-MSE to the EMA teacher."""
    lb = cfg['labeled_bs']
    logits = student_out[0].float()
    sup, dice = supervised_loss(logits[:lb], label[:lb])
    weight = cfg['consistency'] * sigmoid_rampup(it, cfg['rampup'])
    consistency = softmax_mse_loss(logits, teacher_logits.float())
    total = sup + weight * consistency
    return total, dict(loss=total, sup=sup, dice=dice, consistency=consistency), {'consistency_weight': weight}


@torch.no_grad()
def update_ema(teacher, student, decay, it):
    """teacher = a * teacher + (1 - a) * student, with a warm start a = min(1 - 1/(it + 1), decay)."""
    a = min(1.0 - 1.0 / (it + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(a).add_(s, alpha=1.0 - a)


def validate(eval_nets, cases, cfg, device):
    """Mean Dice of the averaged networks on the validation cases (sliding window)."""
    preset = PRESETS[cfg['dataset']]
    for net in eval_nets:
        net.eval()
    dices = []
    for i in range(len(cases)):
        sample = cases[i]
        pred, _ = test_single_case(eval_nets, sample['image'], preset['stride_xy'], preset['stride_z'],
                                   cfg['patch_size'], cfg['num_classes'], device=device,
                                   channels_last=cfg['channels_last'], amp=cfg['amp'])
        dices.append(calculate_metric_percase(pred > 0, sample['label'] > 0)[0])
    for net in eval_nets:
        net.train()
    return sum(dices) / len(dices)


def main(argv=None):
    cfg = parse_args(argv)
    rank, world_size, local_rank = env_rank()
    device = select_device(cfg['gpu'], local_rank)
    if world_size > 1:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
        if device.type == 'cuda':
            torch.cuda.set_device(device)
    is_main = rank == 0
    amp = amp_dtype(device) if cfg['amp'] else None
    seed_everything(cfg['seed'], bool(cfg['deterministic']))

    # --- data: check the folder first, then the two-stream sampler over iterations ---
    if cfg['dataset'] == 'synthetic' and is_main:
        if cfg['num_classes'] not in (2, 3):
            raise SystemExit(f'error: --dataset synthetic makes 2 or 3 classes, '
                             f'not --num_classes {cfg["num_classes"]}')
        from dataloaders.synthetic import make_synthetic_dataset
        make_synthetic_dataset(cfg['root_path'], num_classes=cfg['num_classes'])
    if world_size > 1:
        dist.barrier()
    normalize = NormalizeIntensity(cfg['normalize'])  # test.py applies the same to every volume it reads
    transform = Compose([normalize] + ([RandomScaleIntensity(cfg['intensity_scale'])] if cfg['intensity_scale'] > 1
                                       else []) + ([RandomRotFlip()] if cfg['rotflip'] else [])
                        + [RandomCrop(cfg['patch_size']), ToTensor()])
    train_set = build_dataset(cfg, transform=transform)
    check_config(cfg, len(train_set), world_size)
    val_set = (build_dataset(cfg, list_file=cfg['val_list'], transform=normalize)
               if cfg['val_list'] and cfg['val_every'] > 0 else None)
    if is_main:  # read every case once: a bad file stops us here, not hours into training
        for dataset in (train_set, val_set):
            if dataset is not None:
                dataset.validate(cfg['num_classes'])

    labeled = list(range(cfg['labelnum']))
    if cfg['method'] == 'sup':
        batches = LabeledBatchSampler(labeled, cfg['batch_size'], seed=cfg['seed'],
                                      num_replicas=world_size, rank=rank)
    else:
        unlabeled = list(range(cfg['labelnum'], len(train_set)))
        batches = TwoStreamBatchSampler(labeled, unlabeled, cfg['batch_size'],
                                        cfg['batch_size'] - cfg['labeled_bs'], seed=cfg['seed'],
                                        num_replicas=world_size, rank=rank)

    # --- networks and optimisers: one SGD per network; the same initial weights on every rank ---
    nets = build_networks(cfg, device)
    memory_format = torch.channels_last_3d if cfg['channels_last'] else torch.contiguous_format
    for net in nets.values():
        net.to(memory_format=memory_format)
    torch.manual_seed(cfg['seed'] + rank)  # but each rank its own dropout masks
    trained = [n for n in ('net_a', 'net_b') if n in nets]
    optimizers = {n: torch.optim.SGD(nets[n].parameters(), lr=cfg['base_lr'], momentum=0.9, weight_decay=1e-4)
                  for n in trained}

    # --- run folder: a new run, or the continuation of the one a checkpoint holds ---
    run_dir = Path(cfg['snapshot_path'])
    start = 0
    resume_path = find_resume(cfg['resume'], run_dir) if cfg['resume'] else None
    if resume_path is not None:
        start = restore(resume_path, cfg, RUN_KEYS, nets, optimizers)
        if start >= cfg['max_iterations']:
            if is_main:
                print(f'nothing to do: {resume_path} is already at iteration {start} of {cfg["max_iterations"]}')
            if world_size > 1:
                dist.destroy_process_group()
            return
    elif is_main and any(run_dir.glob('*.pth')):
        raise SystemExit(f'error: {run_dir} already holds checkpoints; pass --resume auto to continue it, '
                         f'or a new --exp / --snapshot_path')
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / 'config.json').write_text(json.dumps(cfg, indent=2) + '\n')
    if world_size > 1:
        dist.barrier()  # the folder exists before any rank writes into it
    log = setup_logger(run_dir, enabled=is_main)
    log.info(f'{cfg["method"]} on {cfg["dataset"]} ({len(train_set)} cases, {cfg["labelnum"]} labeled), '
             f'device {device}, world size {world_size}, run folder {run_dir}')
    if resume_path is not None:
        log.info(f'resumed from {resume_path} at iteration {start}')

    if world_size > 1:
        for n in trained:
            if cfg['sync_bn']:
                nets[n] = torch.nn.SyncBatchNorm.convert_sync_batchnorm(nets[n])
            nets[n] = DistributedDataParallel(nets[n], device_ids=[device.index] if device.type == 'cuda' else None)
    plain = {n: (m.module if isinstance(m, DistributedDataParallel) else m) for n, m in nets.items()}

    # Samples are keyed by (index, seed, iteration), and the loader draws its workers' base seed from its
    # own generator, not the global one: a resumed run sees the same data and dropout with any num_workers.
    sampler = IterationBatchSampler(batches, cfg['seed'], cfg['max_iterations'], start_iteration=start)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg['num_workers'],
                        pin_memory=device.type == 'cuda', worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(cfg['seed']))
    scaler = torch.amp.GradScaler('cuda', enabled=amp == torch.float16)  # bfloat16 needs no loss scaling
    table = IterationCSV(run_dir / 'iterations.csv', COLUMNS[cfg['method']], start, enabled=is_main)
    trace = open(run_dir / f'samples_rank{rank}.csv', 'a') if cfg['trace_samples'] else None

    def checkpoint(name, iteration):
        table.flush()  # every row up to the checkpoint is on disk: a resume after a kill loses none
        if is_main:
            save_checkpoint({'iteration': iteration, 'config': cfg, 'method': cfg['method'],
                             **{n: m.state_dict() for n, m in plain.items()},
                             **{'optimizer_' + n[-1]: o.state_dict() for n, o in optimizers.items()},
                             'rng': rng_state()}, run_dir / name)

    # --- the loop: one batch, every loss term, one backward, both optimisers step ---
    bar = tqdm(total=cfg['max_iterations'], initial=start, disable=not is_main, dynamic_ncols=True)
    best, t0 = -1.0, time.time()
    with StopSignals() as stop:  # SIGINT / SIGTERM: finish the step, save, exit
        for keys, batch in zip(sampler, loader):
            it = keys[0][2]
            lr = cfg['base_lr'] * 0.1 ** (it // cfg['lr_step'])
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group['lr'] = lr
            image = batch['image'].to(device, non_blocking=True).contiguous(memory_format=memory_format)
            label = batch['label'].to(device, non_blocking=True)
            generator = step_generator(cfg['seed'] + rank, it, device)
            if trace:
                trace.write(f'{it},' + ','.join(str(k[0]) for k in keys) + '\n')

            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                if cfg['method'] == 'dual':
                    loss, record, extra = dual_losses(nets['net_a'](image), nets['net_b'](image), label, cfg, it,
                                                      generator, world_size)
                elif cfg['method'] == 'mt':
                    noise = torch.randn(image.shape, generator=generator, device=device).mul_(0.1).clamp_(-0.2, 0.2)
                    with torch.no_grad():
                        teacher_logits = nets['ema'](image + noise)[0]
                    loss, record, extra = mt_losses(nets['net_a'](image), teacher_logits, label, cfg, it)
                else:
                    logits = nets['net_a'](image)[0].float()
                    loss, dice = supervised_loss(logits, label)
                    record, extra = dict(loss=loss, sup=loss, dice=dice), {}

            # One device-to-host copy per step for every logged value; stop on the first non-finite term.
            names = list(record)
            values = torch.stack([record[n].detach().float() for n in names]).tolist()
            bad = [n for n, v in zip(names, values) if not math.isfinite(v) and n != 'loss']
            if bad or not math.isfinite(values[0]):
                raise SystemExit(f'error: non-finite loss term {", ".join(bad or ["loss"])} at iteration {it}; '
                                 f'stopping (the last good checkpoint in {run_dir} is kept)')

            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            for opt in optimizers.values():
                scaler.step(opt)
            scaler.update()
            if cfg['method'] == 'mt':
                update_ema(plain['ema'], plain['net_a'], cfg['ema_decay'], it)

            done = it + 1
            row = {**dict(zip(names, values)), **extra, 'lr': lr}
            table.write(it, {k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()})
            bar.set_postfix(loss=f'{values[0]:.4f}', refresh=False)
            bar.update(1)
            if done % cfg['log_every'] == 0 or done == cfg['max_iterations']:
                table.flush()
                log.info(f'iteration {done}: ' + ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                                                           for k, v in row.items()))
            if val_set is not None and done % cfg['val_every'] == 0:
                dice = validate([plain[n] for n in trained], val_set, cfg, device)
                log.info(f'iteration {done}: validation Dice {dice:.4f}')
                if dice > best:
                    best = dice
                    checkpoint('best.pth', done)
            if done % cfg['save_every'] == 0 and done < cfg['max_iterations']:
                checkpoint('latest.pth', done)
            if stop.requested(world_size, device) and done < cfg['max_iterations']:
                checkpoint('latest.pth', done)
                bar.close()
                table.close()
                log.info(f'stopped by signal {stop.signum} after iteration {done}; continue with --resume auto')
                sys.exit(128 + stop.signum)

    checkpoint('final.pth', cfg['max_iterations'])
    bar.close()
    table.close()
    if trace:
        trace.close()
    log.info(f'finished {cfg["max_iterations"] - start} iterations in {time.time() - t0:.0f} s; '
             f'final checkpoint {run_dir / "final.pth"}')
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == '__main__':
    run_cli(main)
