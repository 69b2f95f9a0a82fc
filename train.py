"""Semi-supervised 3D segmentation with a pair of V-Nets (Lu et al., ISBI 2025; arXiv 2505.17690).

    python train.py --labelnum 8 --gpu 0                      # the paper's LA setting
    python train.py --dataset synthetic --gpu -1              # CPU quick start on phantoms
    python train.py --method mt   |   --method sup            # the baselines
    torchrun --nproc_per_node 2 train.py ...                  # several GPUs (DDP)

Reads top to bottom as docs/method.md: flags, data from the two-stream sampler, the two
networks and their SGD optimisers, then one loop computing every loss term by name.
"""
import copy
import json
import sys
import time
from argparse import ArgumentDefaultsHelpFormatter
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dataloaders import (NORMALIZE_MODES, Compose, H5Dataset, IterationBatchSampler, LabeledBatchSampler,
                         NormalizeIntensity, RandomCrop, RandomRotFlip, ToTensor, TwoStreamBatchSampler)
from importers.volumes import read_recipe
from losses import (FILTER_MODES, confident_disagreement, cosine_consistency_loss, cps_loss, cross_pseudo_label,
                    mutual_correction_loss, prototype_contrastive_loss, softmax_mse_loss, supervised_loss, urps_loss)
from utils.checkpoint import save_checkpoint
from utils.collapse import CollapseWatch
from utils.cli import OneLineParser, run_cli
from utils.config import (PRESETS, RUN_CONTROL, add_common_args, amp_dtype, build_net, check_config, check_split,
                          env_rank, init_distributed, resolve, run_keys, select_device, use_channels_last)
from utils.inference import test_single_case
from utils.metrics import calculate_metric_percase
from utils.ramps import sigmoid_rampup
from utils.resume import resume_point
from utils.run_log import RunRecords, host_values, setup_logger
from utils.seeding import rng_states, seed_everything, set_tf32, step_generator
from utils.signals import StopSignals, worker_init

def build_parser():
    """The flags, by group; every group but RUN_CONTROL defines the run (a resume must match it)."""
    p = OneLineParser(description=__doc__.split('\n')[0], formatter_class=ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('data, networks and optimisation')
    weights = p.add_argument_group('loss weights (0 turns a term off)')
    teacher = p.add_argument_group('mean teacher (--method mt)')
    control = p.add_argument_group(RUN_CONTROL)
    add_common_args(g, control)
    g.add_argument('--max_iterations', type=int, default=None, help='T (preset; 6000 for LA)')
    g.add_argument('--batch_size', type=int, default=None, help='B volumes per step (4)')
    g.add_argument('--labeled_bs', type=int, default=None, help='labeled volumes per step (2)')
    g.add_argument('--base_lr', type=float, default=0.01)
    g.add_argument('--lr_step', type=int, default=None, help='lr x0.1 every this many iterations (2500)')
    g.add_argument('--rotflip', action='store_true', help="add the lineage's RandomRotFlip augmentation")
    g.add_argument('--normalize', choices=NORMALIZE_MODES, default='zscore',
                   help='per-volume intensity normalisation at load, also applied by test.py; a data step of ours '
                        "applied to every method alike (none: the stored values, as the lineage)")
    g.add_argument('--rampup', type=int, default=None, help='ramp-up length in iterations (T)')
    g = weights
    g.add_argument('--alpha_mc', type=float, default=0.5, help='mutual correction on labeled data')
    g.add_argument('--lambda_reg', type=float, default=1.0, help='cosine consistency')
    g.add_argument('--lambda_urps', type=float, default=1.0, help='uncertainty-rectified pseudo supervision')
    g.add_argument('--lambda_cps', type=float, default=1.0, help='entropy-filtered cross pseudo-labels')
    g.add_argument('--lambda_con', type=float, default=0.1, help='prototype contrastive (ramped)')
    g.add_argument('--uncertain_percent', type=float, default=20.0, help='L_cps: share of uncertain voxels')
    g.add_argument('--filter', choices=FILTER_MODES, default='global',
                   help="L_cps entropy filter: the percentile over the unlabeled batch (global, the paper's); "
                        'per predicted class (classwise, ours) or no filter (none, ours). With --ramp_unsup 1 '
                        '--lambda_urps 0 it failed on 0 of 10 seeds where the paper\'s settings failed on 4 '
                        '(half-resolution LA, n_filters 8, 600 iterations; README, "The paper and our options")')
    g.add_argument('--ramp_unsup', type=int, choices=[0, 1], default=0,
                   help="0: L_reg, L_urps and L_cps at full weight from the first iteration (the paper's); "
                        "1: they ramp in with L_con's sigmoid (ours). With --filter classwise --lambda_urps 0 it "
                        'failed (> 3 Dice points behind sup) on 0 of 10 seeds, the paper\'s settings on 4 '
                        '(half-resolution LA, n_filters 8, 600 iterations; README, "The paper and our options")')
    g.add_argument('--conf_thresh', type=float, default=0.6)
    g.add_argument('--contrast_tau', type=float, default=0.1)
    g.add_argument('--contrast_samples', type=int, default=2048)
    g = teacher
    g.add_argument('--ema_decay', type=float, default=0.99)
    g.add_argument('--consistency', type=float, default=0.1)
    g = control
    g.add_argument('--deterministic', type=int, default=1, choices=[0, 1])
    g.add_argument('--num_workers', type=int, default=2)
    g.add_argument('--save_every', type=int, default=1000, help='checkpoint period in iterations')
    g.add_argument('--log_every', type=int, default=50, help='log.txt line period in iterations')
    g.add_argument('--resume', default=None, help='checkpoint path, or auto for the run folder\'s newest')
    g.add_argument('--val_list', default=None, help='list file for periodic validation (never the test list)')
    g.add_argument('--val_every', type=int, default=0, help='validation period in iterations (0: off)')
    g.add_argument('--amp', action='store_true',
                   help='mixed precision: float16 autocast and a gradient scaler on CUDA, bfloat16 autocast on the CPU')
    g.add_argument('--sync_bn', action='store_true', help='SyncBatchNorm under torchrun (default: per-GPU BN)')
    g.add_argument('--tensorboard', action='store_true',
                   help='also write every iterations.csv value to <run>/tensorboard/ (needs tensorboard)')
    g.add_argument('--image_every', type=int, default=100,
                   help='with --tensorboard: slice pictures of the batch every this many iterations (0: off)')
    return p


def parse_args(argv=None):
    """The settings of a run as a dict, filled from the dataset's preset."""
    cfg = resolve(build_parser().parse_args(argv))
    if cfg['rampup'] is None:
        cfg['rampup'] = cfg['max_iterations']
    return cfg


def build_dataset(cfg, split='train', list_file=None, transform=None):
    return H5Dataset(cfg['root_path'], split=split, list_file=list_file, transform=transform,
                     pattern=cfg['pattern'] or PRESETS[cfg['dataset']]['pattern'], num_classes=cfg['num_classes'])


def train_transform(cfg):
    """Whole-volume normalisation (test.py applies the same to every volume it reads), augmentation, crop."""
    rotflip = [RandomRotFlip()] if cfg['rotflip'] else []
    return Compose([NormalizeIntensity(cfg['normalize'])] + rotflip
                   + [RandomCrop(cfg['patch_size']), ToTensor()])


def build_networks(cfg, device):
    """dual: A = V-Net, B = ResNet-34 V-Net; sup: a V-Net; mt: a V-Net student and its EMA teacher."""
    nets = {'net_a': build_net('a', cfg['num_classes'], cfg['n_filters'])}
    if cfg['method'] == 'dual':
        nets['net_b'] = build_net('b', cfg['num_classes'], cfg['n_filters'])
    if cfg['method'] == 'mt':
        nets['ema'] = copy.deepcopy(nets['net_a'])
        for p in nets['ema'].parameters():
            p.requires_grad_(False)
    return {name: net.to(device).train() for name, net in nets.items()}


def build_optimizers(cfg, nets):
    """{'net_a': SGD, ...}: one optimiser per trained network (not mt's EMA teacher), the lineage's settings."""
    return {n: torch.optim.SGD(nets[n].parameters(), lr=cfg['base_lr'], momentum=0.9, weight_decay=1e-4)
            for n in ('net_a', 'net_b') if n in nets}


def grad_scaler(amp):
    """train_step's gradient scaler for autocast dtype `amp` (None: float32): on for float16 only, whose narrow
    exponent range underflows small gradients; bfloat16 keeps float32's range and needs no loss scaling."""
    return torch.amp.GradScaler('cuda', enabled=amp == torch.float16)


def dual_losses(out_a, out_b, label, cfg, it, generator, world_size):
    """Every term of docs/method.md's training iteration for one batch (labeled part first, labeled_bs volumes).

    Returns three values, (total, record, extra):
      total   the 0-d loss tensor to back-propagate (term 8);
      record  {name: 0-d tensor}: 'loss' (= total), sup_a, sup_b, dice_a, dice_b, mc_a, mc_b, reg, urps, cps_a,
              cps_b, con (a term switched off by a zero weight is 0), the labeled volumes' foreground share
              label_fg, and the pseudo-label shares reliable (R's share of unlabeled voxels), pseudo_fg
              (yhat's foreground share) and reliable_fg (foreground share within R), 0 when no pseudo-labels
              are made;
      extra   {'winner': a 0-d bool tensor, True where A wins, 'lambda_con': the ramped contrastive weight,
              'unsup_weight': the factor on L_reg, L_urps and L_cps (1 with --ramp_unsup 0)}, the last two as
              Python numbers.
    train.py logs record and extra, under these names, as iterations.csv columns (the winner as A or B).
    Nothing here waits for the device to pick the winner: both choices are made by torch.where on the device."""
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
    a_wins = dice_pair[0] <= dice_pair[1]  # a 0-d tensor: bool() would wait for the device every step

    # 3. mutual correction where exactly one network is confident (labeled part)
    mc_a = mc_b = zero
    if cfg['alpha_mc'] > 0:
        mask = confident_disagreement(prob_a[:lb], prob_b[:lb], cfg['conf_thresh'])
        mc_a = mutual_correction_loss(prob_a[:lb], label[:lb], mask)
        mc_b = mutual_correction_loss(prob_b[:lb], label[:lb], mask)

    # 4. cosine consistency on the whole batch
    reg = cosine_consistency_loss(prob_a, prob_b) if cfg['lambda_reg'] > 0 else zero

    # 5. uncertainty-rectified pseudo supervision: the winner teaches the loser
    urps = zero
    if cfg['lambda_urps'] > 0:  # the winner's tensor bit for bit; the winner gets zero gradient through where
        urps = urps_loss(torch.where(a_wins, logits_b, logits_a), torch.where(a_wins, prob_a, prob_b))

    # 6. entropy-filtered cross pseudo-labels on the unlabeled part (term 7 uses them too)
    pseudo = reliable = None
    if cfg['lambda_cps'] > 0 or cfg['lambda_con'] > 0:
        pseudo, reliable = cross_pseudo_label(prob_a[lb:], prob_b[lb:], cfg['uncertain_percent'], cfg['filter'])
    cps_a = cps_b = zero
    if cfg['lambda_cps'] > 0:
        cps_a = cps_loss(logits_a[lb:], pseudo, reliable)
        cps_b = cps_loss(logits_b[lb:], pseudo, reliable)

    # 7. prototype contrast on the loser's features, ramped in over the run
    ramp = sigmoid_rampup(it, cfg['rampup'])
    lambda_c = cfg['lambda_con'] * ramp
    con = zero
    if cfg['lambda_con'] > 0:
        loser_feat = torch.where(a_wins, feat_b[lb:], feat_a[lb:])
        loser_prob = torch.where(a_wins, prob_b[lb:], prob_a[lb:])
        con = prototype_contrastive_loss(loser_feat, loser_prob, pseudo, reliable, cfg['contrast_tau'],
                                         cfg['contrast_samples'], generator)

    # 8. the total; --ramp_unsup 1 holds back the terms that learn from the networks' own early guesses, which
    # at full weight from iteration 0 can agree on background everywhere and never leave it
    unsup = ramp if cfg['ramp_unsup'] else 1.0
    total = (sup_a + sup_b + cfg['alpha_mc'] * (mc_a + mc_b) + unsup * cfg['lambda_cps'] * (cps_a + cps_b)
             + unsup * (cfg['lambda_reg'] * reg + cfg['lambda_urps'] * urps) + lambda_c * con)
    record = dict(loss=total, sup_a=sup_a, sup_b=sup_b, dice_a=dice_a, dice_b=dice_b, mc_a=mc_a, mc_b=mc_b,
                  reg=reg, urps=urps, cps_a=cps_a, cps_b=cps_b, con=con, label_fg=(label[:lb] > 0).float().mean(),
                  reliable=zero, pseudo_fg=zero, reliable_fg=zero)
    if reliable is not None:  # is R the class mix of yhat? (a filter can starve R of foreground)
        fg = pseudo > 0
        record.update(reliable=reliable.float().mean(), pseudo_fg=fg.float().mean(),
                      reliable_fg=(fg & reliable).sum() / reliable.sum().clamp_min(1))
    return total, record, {'winner': a_wins, 'lambda_con': lambda_c, 'unsup_weight': unsup}


def mt_losses(student_out, teacher_logits, label, cfg, it):
    """Mean teacher (UA-MT style): supervised loss + ramped softmax-MSE to the EMA teacher."""
    lb = cfg['labeled_bs']
    logits = student_out[0].float()
    sup, dice = supervised_loss(logits[:lb], label[:lb])
    weight = cfg['consistency'] * sigmoid_rampup(it, cfg['rampup'])
    consistency = softmax_mse_loss(logits, teacher_logits.float())
    total = sup + weight * consistency
    return total, dict(loss=total, sup=sup, dice=dice, consistency=consistency), {'consistency_weight': weight}


def add_noise(image, std, generator):
    """image + clamp(std * N(0, 1), -2 std, 2 std), drawn from generator: the mean teacher's perturbation."""
    noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    return image + noise.mul_(std).clamp_(-2 * std, 2 * std)


@torch.no_grad()
def update_ema(teacher, student, decay, it):
    """teacher = a * teacher + (1 - a) * student, with a warm start a = min(1 - 1/(it + 1), decay)."""
    a = min(1.0 - 1.0 / (it + 1), decay)
    # one multi-tensor operation over all parameters instead of two small kernels per parameter tensor
    teacher_params, student_params = list(teacher.parameters()), list(student.parameters())
    torch._foreach_mul_(teacher_params, a)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - a)


def train_step(nets, optimizers, scaler, image, label, cfg, it, generator, world_size=1, amp=None):
    """One training iteration on a batch, as train.py runs it and the benchmarks time it: the forward passes
    and every loss term of cfg['method'] under autocast in `amp` (None: float32), one backward through the
    gradient scaler, a step of every optimiser, and for mt the teacher's EMA update.

    nets: build_networks' dict (networks may be DDP-wrapped); optimizers: {'net_a': SGD, ...}; image, label:
    (B, 1, X, Y, Z) and (B, X, Y, Z) on the networks' device, labeled volumes first. Returns (loss, record,
    extra) as dual_losses does (sup and mt: their own records)."""
    with torch.autocast(image.device.type, dtype=amp, enabled=amp is not None):
        if cfg['method'] == 'dual':
            loss, record, extra = dual_losses(nets['net_a'](image), nets['net_b'](image), label, cfg, it, generator,
                                              world_size)
        elif cfg['method'] == 'mt':
            with torch.no_grad():
                teacher_logits = nets['ema'](add_noise(image, 0.1, generator))[0]
            loss, record, extra = mt_losses(nets['net_a'](image), teacher_logits, label, cfg, it)
        else:
            logits = nets['net_a'](image)[0].float()
            loss, dice = supervised_loss(logits, label)
            record, extra = dict(loss=loss, sup=loss, dice=dice), {}
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    for opt in optimizers.values():
        scaler.step(opt)
    scaler.update()
    if cfg['method'] == 'mt':
        update_ema(nets['ema'], nets['net_a'], cfg['ema_decay'], it)
    return loss, record, extra


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
                                   channels_last=cfg['channels_last'], amp=amp_dtype(device) if cfg['amp'] else None)
        dices.append(calculate_metric_percase(pred > 0, sample['label'] > 0)[0])
    for net in eval_nets:
        net.train()
    dice = sum(dices) / len(dices)
    if dist.is_initialized():  # ranks' BatchNorm statistics differ: rank 0's score (logged, saved) decides for all
        score = torch.tensor([dice], dtype=torch.float64, device=device)
        dist.broadcast(score, 0)
        dice = score.item()
    return dice


def load_data(cfg, is_main, world_size):
    """The training set and the validation set (None without --val_list/--val_every), every case read once."""
    if cfg['dataset'] == 'synthetic' and is_main:
        from dataloaders.synthetic import make_synthetic_dataset
        make_synthetic_dataset(cfg['root_path'], num_classes=cfg['num_classes'])
    if world_size > 1:
        dist.barrier()
    train_set = build_dataset(cfg, transform=train_transform(cfg))
    check_split(cfg, len(train_set), world_size)
    val_set = (build_dataset(cfg, list_file=cfg['val_list'], transform=NormalizeIntensity(cfg['normalize']))
               if cfg['val_list'] and cfg['val_every'] > 0 else None)
    if is_main:  # a bad file stops us here, not hours into training
        for dataset in (train_set, val_set):
            if dataset is not None:
                dataset.validate(cfg['num_classes'])
    return train_set, val_set


def distribute(nets, trained, sync_bn, device):
    """DistributedDataParallel wrappers of the trained networks (gradients averaged across ranks)."""
    wrapped = {}
    for n in trained:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(nets[n]) if sync_bn else nets[n]
        wrapped[n] = DistributedDataParallel(net, device_ids=[device.index] if device.type == 'cuda' else None)
    return wrapped


def batch_sampler(cfg, num_cases, rank, world_size):
    """Labeled indices 0..labelnum-1, unlabeled the rest: each batch takes labeled_bs of the first stream
    and the others from the second (sup: labeled batches only); each rank its own slice."""
    labeled = list(range(cfg['labelnum']))
    if cfg['method'] == 'sup':
        return LabeledBatchSampler(labeled, cfg['batch_size'], seed=cfg['seed'], num_replicas=world_size, rank=rank)
    return TwoStreamBatchSampler(labeled, list(range(cfg['labelnum'], num_cases)), cfg['batch_size'],
                                 cfg['batch_size'] - cfg['labeled_bs'], seed=cfg['seed'],
                                 num_replicas=world_size, rank=rank)


def main(argv=None):
    cfg = parse_args(argv)
    check_config(cfg)
    rank, world_size, local_rank = env_rank()
    device = select_device(cfg['gpu'], local_rank)
    cfg['channels_last'] = use_channels_last(cfg['channels_last'], device)
    if world_size > 1:
        init_distributed(device)
    is_main = rank == 0
    amp = amp_dtype(device) if cfg['amp'] else None
    seed_everything(cfg['seed'], bool(cfg['deterministic']))
    set_tf32(cfg['tf32'])

    # --- data: check the folder first, then the two-stream sampler over iterations ---
    train_set, val_set = load_data(cfg, is_main, world_size)
    # the import recipe travels with the model (config.json, every checkpoint): test.py --input applies it
    cfg['recipe'] = read_recipe(cfg['root_path'])
    batches = batch_sampler(cfg, len(train_set), rank, world_size)

    # --- networks and optimisers: one SGD per network; the same initial weights on every rank ---
    nets = build_networks(cfg, device)
    memory_format = torch.channels_last_3d if cfg['channels_last'] else torch.contiguous_format
    for net in nets.values():
        net.to(memory_format=memory_format)
    torch.manual_seed(cfg['seed'] + rank)  # but each rank its own dropout masks
    optimizers = build_optimizers(cfg, nets)
    trained = list(optimizers)
    scaler = grad_scaler(amp)

    # --- run folder: a new run, or the continuation of the one a checkpoint holds ---
    run_dir = Path(cfg['snapshot_path'])
    start, resume_path, best = resume_point(cfg, run_keys(build_parser()), nets, optimizers, is_main, scaler, rank,
                                            world_size, device)
    if start >= cfg['max_iterations']:
        if is_main:
            print(f'nothing to do: {resume_path} is already at iteration {start} of {cfg["max_iterations"]}')
        if world_size > 1:
            dist.destroy_process_group()
        return
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
        nets.update(distribute(nets, trained, cfg['sync_bn'], device))
    plain = {n: (m.module if isinstance(m, DistributedDataParallel) else m) for n, m in nets.items()}

    # Samples are keyed by (index, seed, iteration), and the loader draws its workers' base seed from its
    # own generator, not the global one: a resumed run sees the same data and dropout with any num_workers.
    # worker_init: the workers live through a stop signal sent to the whole job, so the step finishes and saves.
    sampler = IterationBatchSampler(batches, cfg['seed'], cfg['max_iterations'], start_iteration=start)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg['num_workers'],
                        pin_memory=device.type == 'cuda', worker_init_fn=worker_init,
                        generator=torch.Generator().manual_seed(cfg['seed']))
    records = RunRecords(run_dir, log, cfg, start, enabled=is_main)

    def checkpoint(name, iteration):
        """Every rank calls it (the RNG states are gathered); rank 0 writes."""
        records.table.flush()  # every row up to the checkpoint is on disk: a resume after a kill loses none
        rng = rng_states(device, world_size)
        if is_main:
            save_checkpoint({'iteration': iteration, 'config': cfg, 'method': cfg['method'],
                             **{n: m.state_dict() for n, m in plain.items()},
                             **{'optimizer_' + n[-1]: o.state_dict() for n, o in optimizers.items()},
                             'rng': rng, 'scaler': scaler.state_dict(), 'best': best}, run_dir / name)

    # --- the loop: one batch, every loss term, one backward, both optimisers step ---
    t0 = time.time()
    makes_pseudo = cfg['method'] == 'dual' and (cfg['lambda_cps'] > 0 or cfg['lambda_con'] > 0)
    watch = CollapseWatch(window=min(100, max(5, cfg['max_iterations'] // 20)))
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
            _, record, extra = train_step(nets, optimizers, scaler, image, label, cfg, it, generator, world_size, amp)
            # the winner, a device tensor, goes to the host with the record in host_values' one copy
            values = host_values({**record, **{k: v for k, v in extra.items() if torch.is_tensor(v)}}, it, run_dir)
            row = {'lr': lr, **values, **extra}
            if 'winner' in row:
                row['winner'] = 'A' if values['winner'] else 'B'
            if makes_pseudo:
                records.warn(watch.update(values['pseudo_fg'], values['label_fg']))

            done = it + 1
            records.write(it, row)
            if cfg['image_every'] and done % cfg['image_every'] == 0:
                records.board.slices(it, {n: plain[n] for n in ('net_a', 'net_b', 'ema') if n in plain}, image,
                                     label, cfg['labeled_bs'] if cfg['method'] != 'sup' else None, cfg['num_classes'])
            if val_set is not None and done % cfg['val_every'] == 0:
                dice = validate([plain[n] for n in trained], val_set, cfg, device)
                log.info(f'iteration {done}: validation Dice {dice:.4f}')
                records.board.scalars(it, {'val_dice': dice})
                if dice > best['dice']:
                    best = {'dice': dice, 'iteration': done}
                    checkpoint('best.pth', done)
            if done % cfg['save_every'] == 0 and done < cfg['max_iterations']:
                checkpoint('latest.pth', done)
            if stop.requested(world_size, device) and done < cfg['max_iterations']:
                checkpoint('latest.pth', done)
                records.close(f'stopped by signal {stop.signum} after iteration {done}; continue with --resume auto')
                sys.exit(128 + stop.signum)

    checkpoint('final.pth', cfg['max_iterations'])
    records.close(f'finished {cfg["max_iterations"] - start} iterations in {time.time() - t0:.0f} s; '
                  f'final checkpoint {run_dir / "final.pth"}')
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == '__main__':
    run_cli(main)
