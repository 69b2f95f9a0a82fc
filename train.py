"""Semi-supervised 3D segmentation with a pair of V-Nets (Lu et al., ISBI 2025; arXiv 2505.17690).

    python train.py --labelnum 8 --gpu 0                      # the paper's LA setting
    python train.py --dataset synthetic --gpu -1              # CPU quick start on generated phantoms
    python train.py --method mt   |   --method sup            # the baselines
    torchrun --nproc_per_node 2 train.py ...                  # several GPUs (DDP)

Reads top to bottom as docs/method.md: the settings (PRESETS: the paper's on LA, then the other datasets),
the flags, the data (dataset, transforms, the two-stream sampler), the two networks and their SGD optimisers,
`dual_step` (one training iteration: both forward passes, the loss terms 1 to 7 by number and name, the total,
backward, both optimisers' steps), the baselines' steps, and `main` with the loop. The run machinery (torchrun,
seeds and stop signals; checkpoints and resume; logs) sits behind utils/processes.py, utils/resume.py and
utils/run_log.py.
"""
import copy
import sys
import time
from argparse import ArgumentDefaultsHelpFormatter

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dataloaders.datasets import LA_PATTERN, DatasetError, H5Dataset
from dataloaders.samplers import IterationBatchSampler, LabeledBatchSampler, TwoStreamBatchSampler
from dataloaders.transforms import NORMALIZE_MODES, Compose, NormalizeIntensity, RandomCrop, RandomRotFlip, ToTensor
from losses import (FILTER_MODES, confident_disagreement, cosine_consistency_loss, cps_loss, cross_pseudo_label,
                    mutual_correction_loss, prototype_contrastive_loss, softmax_mse_loss, supervised_loss, urps_loss)
from networks import build_net
from utils.cli import OneLineParser, UsageError, parse_patch, run_cli
from utils.config import check_config, check_split, cpu_cost_warning, resolve
from utils.device import amp_dtype
from utils.processes import Processes, StopSignals, worker_init
from utils.ramps import sigmoid_rampup
from utils.resume import Checkpoints, run_keys
from utils.run_log import RunLog

# The settings a flag leaves unset come from its dataset's row, and from the 'la' row where that is silent.
# 'la' is the paper's setting (docs/method.md): 6000 iterations of batches of 2 labeled + 2 unlabeled
# 112x112x80 patches, 8 of the 80 training volumes labeled, lr 0.01 x0.1 every 2500 iterations, V-Nets of 16
# filters, evaluated with a sliding window of strides 18 (x, y) and 4 (z).
PRESETS = {
    'la': dict(root_path='data/LA', pattern=LA_PATTERN, num_classes=2, labelnum=8, patch_size=(112, 112, 80),
               max_iterations=6000, lr_step=2500, batch_size=4, labeled_bs=2, n_filters=16, stride_xy=18,
               stride_z=4),
    'pancreas': dict(root_path='data/Pancreas', pattern='{id}_norm.h5', labelnum=12, patch_size=(96, 96, 96),
                     stride_xy=16, stride_z=16),
    # generated phantoms, sized so that the whole quick start runs in minutes on a laptop CPU
    'synthetic': dict(root_path='data/Synthetic', patch_size=(48, 48, 32), max_iterations=300, lr_step=200,
                      n_filters=8, stride_xy=16, stride_z=16),
    # any folder of h5 volumes with list files (importers/import_volumes.py writes one)
    'h5': dict(root_path=None, pattern='{id}.h5', patch_size=(96, 96, 96), stride_xy=16, stride_z=16),
}
# The title of the argument group of the flags that do not change what a run computes; every other flag is a
# run key, which a resume must not change.
RUN_CONTROL = 'run control'
# Flags of earlier versions, and what to pass instead.
RENAMED = {'--filter': '--cps_filter'}


def build_parser():
    """The flags, by group; None: the dataset's preset decides."""
    p = OneLineParser(description=__doc__.split('\n')[0], formatter_class=ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('data, networks and optimisation')
    g.add_argument('--dataset', choices=sorted(PRESETS), default='la')
    g.add_argument('--method', choices=['dual', 'mt', 'sup'], default='dual')
    g.add_argument('--labelnum', type=int, default=None, help='labeled volumes: the first N of train.list (8)')
    g.add_argument('--num_classes', type=int, default=None, help="(2, or the data's dataset.json)")
    g.add_argument('--patch_size', type=parse_patch, default=None, help='(112,112,80)')
    g.add_argument('--n_filters', type=int, default=None, help='(16)')
    g.add_argument('--max_iterations', type=int, default=None, help='T (6000)')
    g.add_argument('--batch_size', type=int, default=None, help='B volumes per step (4)')
    g.add_argument('--labeled_bs', type=int, default=None, help='labeled volumes per step (2)')
    g.add_argument('--base_lr', type=float, default=0.01)
    g.add_argument('--lr_step', type=int, default=None, help='lr x0.1 every this many iterations (2500)')
    g.add_argument('--seed', type=int, default=1337)
    g.add_argument('--rotflip', action='store_true', help="add the lineage's RandomRotFlip augmentation")
    g.add_argument('--normalize', choices=NORMALIZE_MODES, default='zscore',
                   help='per-volume intensity normalisation at load, also applied by test.py; a data step of ours '
                        'applied to every method alike (none: the stored values, as the lineage)')
    g.add_argument('--rampup', type=int, default=None, help='ramp-up length in iterations (T)')
    g = p.add_argument_group('loss weights (0 turns a term off) and their settings')
    g.add_argument('--alpha_mc', type=float, default=0.5, help='3. mutual correction on labeled data')
    g.add_argument('--lambda_reg', type=float, default=1.0, help='4. cosine consistency')
    g.add_argument('--lambda_urps', type=float, default=1.0, help='5. uncertainty-rectified pseudo supervision')
    g.add_argument('--lambda_cps', type=float, default=1.0, help='6. entropy-filtered cross pseudo-labels')
    g.add_argument('--lambda_con', type=float, default=0.1, help='7. prototype contrast (ramped)')
    g.add_argument('--conf_thresh', type=float, default=0.6, help='3: confidence threshold')
    g.add_argument('--uncertain_percent', type=float, default=20.0, help='6: share of uncertain voxels')
    g.add_argument('--cps_filter', choices=FILTER_MODES, default='global',
                   help="6: the entropy percentile over the unlabeled batch (global, the paper's), per predicted "
                        'class (classwise, ours) or no filter (none, ours); README, "The paper and our options"')
    g.add_argument('--ramp_unsup', type=int, choices=[0, 1], default=0,
                   help="0: terms 4 to 6 at full weight from the first iteration (the paper's); 1: they ramp in "
                        'with term 7\'s sigmoid (ours); README, "The paper and our options"')
    g.add_argument('--contrast_tau', type=float, default=0.1, help='7: temperature')
    g.add_argument('--contrast_samples', type=int, default=2048, help='7: voxels drawn per class')
    g = p.add_argument_group('mean teacher (--method mt)')
    g.add_argument('--ema_decay', type=float, default=0.99)
    g.add_argument('--consistency', type=float, default=0.1)
    g = p.add_argument_group('computation (run keys: a resume keeps them)')
    g.add_argument('--amp', action='store_true',
                   help='mixed precision: float16 autocast and a gradient scaler on CUDA, bfloat16 autocast on the CPU')
    g.add_argument('--deterministic', type=int, default=1, choices=[0, 1], help='deterministic cuDNN algorithms')
    g.add_argument('--tf32', type=int, choices=[0, 1], default=0,
                   help='1: float32 convolutions and matrix products on CUDA in TensorFloat-32 (faster on Ampere '
                        'and later, 10 mantissa bits); 0: true float32, the reference. No effect on the CPU')
    g.add_argument('--channels_last', type=int, choices=[0, 1], nargs='?', const=1, default=None,
                   help='channels_last_3d networks and inputs (default: 1 on the CPU, 0 on CUDA)')
    g.add_argument('--sync_bn', action='store_true', help='SyncBatchNorm under torchrun (default: per-GPU BN)')
    g = p.add_argument_group(RUN_CONTROL)
    g.add_argument('--root_path', default=None, help='dataset folder (default: the preset\'s, e.g. data/LA)')
    g.add_argument('--pattern', default=None, help='h5 path of a case id, e.g. "{id}_norm.h5"')
    g.add_argument('--exp', default='dual', help='experiment name, part of the run folder')
    g.add_argument('--snapshot_path', default=None,
                   help='run folder (default model/<dataset>/<exp>_<method>_<labelnum>labels)')
    g.add_argument('--gpu', default='0', help='CUDA index; -1 or cpu for the CPU')
    g.add_argument('--num_workers', type=int, default=2)
    g.add_argument('--save_every', type=int, default=1000, help='checkpoint period in iterations')
    g.add_argument('--log_every', type=int, default=50, help='log.txt line period in iterations')
    g.add_argument('--resume', default=None, help='checkpoint path, or auto for the run folder\'s newest')
    g.add_argument('--val_list', default=None, help='list file for periodic validation (never the test list)')
    g.add_argument('--val_every', type=int, default=0, help='validation period in iterations (0: off)')
    g.add_argument('--tensorboard', action='store_true',
                   help='also write every iterations.csv value to <run>/tensorboard/ (needs tensorboard)')
    g.add_argument('--image_every', type=int, default=100,
                   help='with --tensorboard: slice pictures of the batch every this many iterations (0: off)')
    g.add_argument('--debug', action='store_true', help='show full tracebacks')
    return p


def parse_args(argv=None):
    """The settings of a run as a dict: the flags, the preset's values where they are unset, checked."""
    argv = sys.argv[1:] if argv is None else list(argv)
    for old, new in RENAMED.items():
        if any(a == old or a.startswith(old + '=') for a in argv):
            raise UsageError(f'{old} is now called {new}')
    cfg = resolve(build_parser().parse_args(argv), PRESETS)
    check_config(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------------ data

def build_dataset(cfg, list_file=None, transform=None):
    return H5Dataset(cfg['root_path'], split='train', list_file=list_file, transform=transform,
                     pattern=cfg['pattern'], num_classes=cfg['num_classes'])


def train_transform(cfg):
    """Whole-volume normalisation (test.py applies the same to every volume it reads), augmentation, crop."""
    rotflip = [RandomRotFlip()] if cfg['rotflip'] else []
    return Compose([NormalizeIntensity(cfg['normalize'])] + rotflip + [RandomCrop(cfg['patch_size']), ToTensor()])


def load_data(cfg, procs):
    """The training set and the validation set (None without --val_list/--val_every); a bad file stops the run
    here, not hours into training."""
    if cfg['dataset'] == 'synthetic' and procs.is_main:
        from dataloaders.synthetic import make_synthetic_dataset
        make_synthetic_dataset(cfg['root_path'], num_classes=cfg['num_classes'])
    procs.barrier()  # the phantoms exist before any rank reads them
    try:
        train_set = build_dataset(cfg, transform=train_transform(cfg))
    except DatasetError as e:
        if cfg['dataset'] == 'la' and 'dataset folder not found' in str(e):
            raise UsageError(f'{e}; the LA data come with UA-MT: git clone --depth 1 '
                             f'https://github.com/yulequan/UA-MT.git data/UA-MT, then move its data/ into '
                             f'data/LA (README, "The Left Atrium data")') from None
        raise
    check_split(cfg, len(train_set), procs.world_size)
    val_set = (build_dataset(cfg, cfg['val_list'], NormalizeIntensity(cfg['normalize']))
               if cfg['val_list'] and cfg['val_every'] > 0 else None)
    for dataset in (train_set, val_set) if procs.is_main else ():
        if dataset is not None:
            dataset.validate(cfg['num_classes'])
    return train_set, val_set


def batch_sampler(cfg, num_cases, procs):
    """Labeled indices 0..labelnum-1, unlabeled the rest: each batch takes labeled_bs of the first stream and the
    others from the second (sup: labeled batches only); each rank its own slice."""
    labeled = list(range(cfg['labelnum']))
    if cfg['method'] == 'sup':
        return LabeledBatchSampler(labeled, cfg['batch_size'], seed=cfg['seed'], num_replicas=procs.world_size,
                                   rank=procs.rank)
    return TwoStreamBatchSampler(labeled, list(range(cfg['labelnum'], num_cases)), cfg['batch_size'],
                                 cfg['batch_size'] - cfg['labeled_bs'], seed=cfg['seed'],
                                 num_replicas=procs.world_size, rank=procs.rank)


def data_loader(dataset, cfg, procs, start):
    """Batches for iterations start..max_iterations-1, in order. Each sample's crop is drawn from the key
    (index, seed, iteration) the sampler gives, and the workers' seeds from the loader's own generator: a resumed
    run sees the same data with any num_workers."""
    sampler = IterationBatchSampler(batch_sampler(cfg, len(dataset), procs), cfg['seed'], cfg['max_iterations'],
                                    start_iteration=start)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg['num_workers'],
                      pin_memory=procs.device.type == 'cuda', worker_init_fn=worker_init,
                      generator=torch.Generator().manual_seed(cfg['seed']))


# -------------------------------------------------------------------------------- networks and optimisers

def build_networks(cfg, device):
    """dual: A = V-Net, B = ResNet-34 V-Net; sup: a V-Net; mt: a V-Net student and its EMA teacher."""
    nets = {'net_a': build_net('a', cfg['num_classes'], cfg['n_filters'])}
    if cfg['method'] == 'dual':
        nets['net_b'] = build_net('b', cfg['num_classes'], cfg['n_filters'])
    if cfg['method'] == 'mt':
        nets['ema'] = copy.deepcopy(nets['net_a']).requires_grad_(False)
    memory_format = torch.channels_last_3d if cfg['channels_last'] else torch.contiguous_format
    return {name: net.to(device, memory_format=memory_format).train() for name, net in nets.items()}


def build_optimizers(cfg, nets):
    """{'net_a': SGD, ...}: one optimiser per trained network (not mt's EMA teacher), the lineage's settings."""
    return {n: torch.optim.SGD(nets[n].parameters(), lr=cfg['base_lr'], momentum=0.9, weight_decay=1e-4)
            for n in ('net_a', 'net_b') if n in nets}


def grad_scaler(amp):
    """The steps' gradient scaler for autocast dtype `amp` (None: float32): on for float16 only, whose narrow
    exponent range underflows small gradients; bfloat16 keeps float32's range and needs no loss scaling."""
    return torch.amp.GradScaler('cuda', enabled=amp == torch.float16)


def backward_and_step(loss, optimizers, scaler):
    """One backward pass of the (scaled) loss, then a step of every optimiser."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()


# --------------------------------------------------------------------------------- one training iteration

def dual_step(net_a, net_b, opt_a, opt_b, scaler, image, label, it, generator, *, labeled_bs, alpha_mc, lambda_reg,
              lambda_urps, lambda_cps, lambda_con, rampup, ramp_unsup, conf_thresh, uncertain_percent, cps_filter,
              contrast_tau, contrast_samples, mean_over_ranks=None, amp=None):
    """One training iteration of the method, docs/method.md's terms 1 to 7 in its order: both forward passes on the
    batch (image (B, 1, X, Y, Z), label (B, X, Y, Z), the first labeled_bs volumes labeled) under autocast in `amp`
    (None: float32), the terms with their flags' weights (0 skips a term), the total, one backward pass through
    the gradient scaler and a step of each network's optimiser. `it` drives the ramps, `generator` draws the
    contrastive samples; mean_over_ranks(tensor) averages over torchrun's processes (None: one process).

    Returns (total, record, extra): total the 0-d loss; record {name: 0-d tensor}: 'loss' (= total), sup_a,
    sup_b, dice_a, dice_b, mc_a, mc_b, reg, urps, cps_a, cps_b, con (0 when off), the labeled volumes' foreground
    share label_fg, and the pseudo-label shares reliable (R's share of unlabeled voxels), pseudo_fg (yhat's
    foreground share) and reliable_fg (foreground share within R), 0 without pseudo-labels; extra {'winner': a 0-d
    bool tensor, True where A wins (nothing here waits for the device), 'con_weight': term 7's ramped weight
    lambda_con * ramp(it), 'unsup_weight': the factor on terms 4 to 6 (1 with ramp_unsup off)}. train.py logs
    record and extra, by these names, as iterations.csv columns (the winner as A or B)."""
    lb = labeled_bs
    with torch.autocast(image.device.type, dtype=amp, enabled=amp is not None):
        (logits_a, feat_a), (logits_b, feat_b) = net_a(image), net_b(image)
        logits_a, logits_b = logits_a.float(), logits_b.float()
        prob_a, prob_b = F.softmax(logits_a, dim=1), F.softmax(logits_b, dim=1)
        zero = logits_a.new_zeros(())

        # 1. supervised loss on the labeled part, per network
        sup_a, dice_a = supervised_loss(logits_a[:lb], label[:lb])
        sup_b, dice_b = supervised_loss(logits_b[:lb], label[:lb])

        # 2. competition: the lower supervised Dice loss wins (ties: A), the same winner on every rank
        dice_pair = torch.stack([dice_a, dice_b]).detach()
        if mean_over_ranks is not None:
            dice_pair = mean_over_ranks(dice_pair)
        a_wins = dice_pair[0] <= dice_pair[1]  # a 0-d tensor: bool() would wait for the device every step

        # 3. mutual correction where exactly one network is confident (labeled part)
        mc_a = mc_b = zero
        if alpha_mc > 0:
            mask = confident_disagreement(prob_a[:lb], prob_b[:lb], conf_thresh)
            mc_a = mutual_correction_loss(prob_a[:lb], label[:lb], mask)
            mc_b = mutual_correction_loss(prob_b[:lb], label[:lb], mask)

        # 4. cosine consistency on the whole batch
        reg = cosine_consistency_loss(prob_a, prob_b) if lambda_reg > 0 else zero

        # 5. uncertainty-rectified pseudo supervision: the winner teaches the loser (torch.where: the chosen
        # tensors bit for bit, and no gradient through the one not chosen)
        urps = zero
        if lambda_urps > 0:
            urps = urps_loss(torch.where(a_wins, logits_b, logits_a), torch.where(a_wins, prob_a, prob_b))

        # 6. entropy-filtered cross pseudo-labels on the unlabeled part (term 7 uses them too)
        pseudo = reliable = None
        if lambda_cps > 0 or lambda_con > 0:
            pseudo, reliable = cross_pseudo_label(prob_a[lb:], prob_b[lb:], uncertain_percent, cps_filter)
        cps_a = cps_b = zero
        if lambda_cps > 0:
            cps_a = cps_loss(logits_a[lb:], pseudo, reliable)
            cps_b = cps_loss(logits_b[lb:], pseudo, reliable)

        # 7. prototype contrast on the loser's features, ramped in over the run
        ramp = sigmoid_rampup(it, rampup)
        con_weight = lambda_con * ramp
        con = zero
        if lambda_con > 0:
            loser_feat = torch.where(a_wins, feat_b[lb:], feat_a[lb:])
            loser_prob = torch.where(a_wins, prob_b[lb:], prob_a[lb:])
            con = prototype_contrastive_loss(loser_feat, loser_prob, pseudo, reliable, contrast_tau, contrast_samples,
                                             generator)

        # the total; ramp_unsup holds back the terms that learn from the networks' own early guesses, which at
        # full weight from iteration 0 can agree on background everywhere and never leave it
        unsup_weight = ramp if ramp_unsup else 1.0
        total = (sup_a + sup_b + alpha_mc * (mc_a + mc_b) + unsup_weight * lambda_cps * (cps_a + cps_b)
                 + unsup_weight * (lambda_reg * reg + lambda_urps * urps) + con_weight * con)
    backward_and_step(total, (opt_a, opt_b), scaler)  # one backward pass; each network steps its own SGD

    record = dict(loss=total, sup_a=sup_a, sup_b=sup_b, dice_a=dice_a, dice_b=dice_b, mc_a=mc_a, mc_b=mc_b,
                  reg=reg, urps=urps, cps_a=cps_a, cps_b=cps_b, con=con, label_fg=(label[:lb] > 0).float().mean(),
                  reliable=zero, pseudo_fg=zero, reliable_fg=zero)
    if reliable is not None:  # is R the class mix of yhat? (a filter can starve R of foreground)
        fg = pseudo > 0
        record.update(reliable=reliable.float().mean(), pseudo_fg=fg.float().mean(),
                      reliable_fg=(fg & reliable).sum() / reliable.sum().clamp_min(1))
    return total, record, {'winner': a_wins, 'con_weight': con_weight, 'unsup_weight': unsup_weight}


def mt_step(student, teacher, optimizer, scaler, image, label, it, generator, *, labeled_bs, consistency, rampup,
            ema_decay, amp=None):
    """The mean-teacher baseline (Tarvainen & Valpola 2017) as the UA-MT lineage trains it, without UA-MT's
    uncertainty mask: the EMA teacher sees the batch with add_noise's noise; the student learns the supervised loss
    on the labeled part plus `consistency` x the ramp x the softmax MSE to the teacher on every volume; then the
    teacher's EMA update. Arguments and returns as dual_step's."""
    with torch.autocast(image.device.type, dtype=amp, enabled=amp is not None):
        with torch.no_grad():
            teacher_logits = teacher(add_noise(image, 0.1, generator))[0]
        logits = student(image)[0].float()
        sup, dice = supervised_loss(logits[:labeled_bs], label[:labeled_bs])
        weight = consistency * sigmoid_rampup(it, rampup)
        mse = softmax_mse_loss(logits, teacher_logits.float())
        total = sup + weight * mse
    backward_and_step(total, (optimizer,), scaler)
    update_ema(teacher, student, ema_decay, it)
    return total, dict(loss=total, sup=sup, dice=dice, consistency=mse), {'consistency_weight': weight}


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


def sup_step(net, optimizer, scaler, image, label, amp=None):
    """The supervised baseline: the V-Net's supervised loss on a batch of labeled volumes."""
    with torch.autocast(image.device.type, dtype=amp, enabled=amp is not None):
        sup, dice = supervised_loss(net(image)[0].float(), label)
    backward_and_step(sup, (optimizer,), scaler)
    return sup, dict(loss=sup, sup=sup, dice=dice), {}


def train_step(nets, optimizers, scaler, image, label, cfg, it, generator, amp=None, mean_over_ranks=None):
    """One training iteration of cfg['method'] with cfg's settings, as the loop runs it and the benchmarks time it.
    nets: build_networks' dict (the trained ones may be DDP-wrapped); optimizers: build_optimizers'. Returns the
    step's (total, record, extra)."""
    if cfg['method'] == 'sup':
        return sup_step(nets['net_a'], optimizers['net_a'], scaler, image, label, amp)
    if cfg['method'] == 'mt':
        return mt_step(nets['net_a'], nets['ema'], optimizers['net_a'], scaler, image, label, it, generator,
                       labeled_bs=cfg['labeled_bs'], consistency=cfg['consistency'], rampup=cfg['rampup'],
                       ema_decay=cfg['ema_decay'], amp=amp)
    return dual_step(nets['net_a'], nets['net_b'], optimizers['net_a'], optimizers['net_b'], scaler, image, label, it,
                     generator, labeled_bs=cfg['labeled_bs'], alpha_mc=cfg['alpha_mc'], lambda_reg=cfg['lambda_reg'],
                     lambda_urps=cfg['lambda_urps'], lambda_cps=cfg['lambda_cps'], lambda_con=cfg['lambda_con'],
                     rampup=cfg['rampup'], ramp_unsup=cfg['ramp_unsup'], conf_thresh=cfg['conf_thresh'],
                     uncertain_percent=cfg['uncertain_percent'], cps_filter=cfg['cps_filter'],
                     contrast_tau=cfg['contrast_tau'], contrast_samples=cfg['contrast_samples'],
                     mean_over_ranks=mean_over_ranks, amp=amp)


# ------------------------------------------------------------------------------------------------- the run

def validate(nets, cases, cfg, device):
    """Mean Dice of the trained networks' averaged softmax on the validation cases (test.py's sliding window)."""
    from utils.inference import test_single_case  # only runs with --val_every load the evaluation code
    from utils.metrics import calculate_metric_percase
    for net in nets:
        net.eval()
    dices = []
    for i in range(len(cases)):
        case = cases[i]
        pred, _ = test_single_case(nets, case['image'], cfg['stride_xy'], cfg['stride_z'], cfg['patch_size'],
                                   cfg['num_classes'], device=device, channels_last=cfg['channels_last'],
                                   amp=amp_dtype(device) if cfg['amp'] else None)
        dices.append(calculate_metric_percase(pred > 0, case['label'] > 0)[0])
    for net in nets:
        net.train()
    return sum(dices) / len(dices)


def main(argv=None):
    cfg = parse_args(argv)
    procs = Processes(cfg['gpu'], cfg['seed'], cfg['deterministic'], cfg['tf32'])  # device, torchrun, the seeds
    device = procs.device
    train_set, val_set = load_data(cfg, procs)
    if procs.is_main and (warning := cpu_cost_warning(cfg, PRESETS, device)):
        print(warning, file=sys.stderr)
    amp = amp_dtype(device) if cfg['amp'] else None
    if amp == torch.bfloat16:  # some CPUs' bfloat16 convolution gradients are wrong: check before training
        from utils.precision import check_cpu_amp
        check_cpu_amp(amp, device, cfg['patch_size'], cfg['n_filters'], cfg['channels_last'])

    # the networks, one SGD each, and where the run starts: iteration 0, or a checkpoint's states with --resume
    nets = build_networks(cfg, device)
    optimizers = build_optimizers(cfg, nets)
    scaler = grad_scaler(amp)
    ckpt = Checkpoints(cfg, nets, optimizers, scaler, procs)
    start = ckpt.resume(run_keys(build_parser(), RUN_CONTROL))
    if start >= cfg['max_iterations']:
        procs.leave()
        return  # resumed at the end of the run: nothing to do
    train_nets = procs.wrap(nets, optimizers, cfg['sync_bn'])  # under torchrun, gradients averaged over ranks
    loader = data_loader(train_set, cfg, procs, start)
    log = RunLog(cfg, start, procs.is_main, nets)  # config.json, log.txt, iterations.csv, TensorBoard
    log.info(f'{cfg["method"]} on {cfg["dataset"]} ({len(train_set)} cases, {cfg["labelnum"]} labeled), device '
             f'{device}, world size {procs.world_size}, run folder {cfg["snapshot_path"]}')
    if ckpt.resumed_from is not None:
        log.info(f'resumed from {ckpt.resumed_from} at iteration {start}')
    memory_format = torch.channels_last_3d if cfg['channels_last'] else torch.contiguous_format

    t0 = time.time()
    with StopSignals() as stop:  # SIGINT / SIGTERM: finish the step, save latest.pth, exit
        for it, batch in enumerate(loader, start):
            lr = cfg['base_lr'] * 0.1 ** (it // cfg['lr_step'])
            for group in (g for opt in optimizers.values() for g in opt.param_groups):
                group['lr'] = lr
            image = batch['image'].to(device, non_blocking=True).contiguous(memory_format=memory_format)
            label = batch['label'].to(device, non_blocking=True)
            _, record, extra = train_step(train_nets, optimizers, scaler, image, label, cfg, it,
                                          procs.step_generator(it), amp, procs.mean)
            log.record(it, lr, record, extra, image, label)  # iterations.csv, log.txt, TensorBoard; stops on NaN
            done = it + 1
            if val_set is not None and done % cfg['val_every'] == 0:
                ckpt.validated(validate([nets[n] for n in optimizers], val_set, cfg, device), done, log)
            stopping = stop.requested(procs) and done < cfg['max_iterations']  # every rank asks every step
            if stopping or done % cfg['save_every'] == 0 and done < cfg['max_iterations']:
                ckpt.save('latest.pth', done, log)
            if stopping:
                log.close(f'stopped by signal {stop.signum} after iteration {done}; continue with --resume auto')
                sys.exit(128 + stop.signum)
    ckpt.save('final.pth', cfg['max_iterations'], log)
    log.close(f'finished {cfg["max_iterations"] - start} iterations in {time.time() - t0:.0f} s; '
              f'final checkpoint {ckpt.path("final.pth")}')
    procs.leave()


if __name__ == '__main__':
    run_cli(main)
