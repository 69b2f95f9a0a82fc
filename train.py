"""Semi-supervised 3D segmentation with a pair of V-Nets (Lu et al., ISBI 2025; arXiv 2505.17690).

    python train.py --labelnum 8 --gpu 0                      # the paper's LA setting
    python train.py --dataset synthetic --gpu -1              # CPU quick start on phantoms
    python train.py --method mt   |   --method sup            # the baselines
    torchrun --nproc_per_node 2 train.py ...                  # several GPUs (DDP)

Reads top to bottom as docs/method.md: flags, data, the two networks and their SGD optimisers,
`dual_step` (one training iteration: both forward passes, the loss terms 1 to 8 by number and name,
backward, the optimisers' steps), the baselines' steps, and `main`'s loop. Checkpoints, resume,
validation, logging, stop signals and DDP live behind utils/run_control.py's RunControl.
"""
import copy
from argparse import ArgumentDefaultsHelpFormatter

import torch
import torch.nn.functional as F

from dataloaders import (NORMALIZE_MODES, Compose, H5Dataset, LabeledBatchSampler, NormalizeIntensity, RandomCrop,
                         RandomRotFlip, ToTensor, TwoStreamBatchSampler)
from importers.volumes import read_recipe
from losses import (FILTER_MODES, confident_disagreement, cosine_consistency_loss, cps_loss, cross_pseudo_label,
                    mutual_correction_loss, prototype_contrastive_loss, softmax_mse_loss, supervised_loss, urps_loss)
from utils.cli import OneLineParser, run_cli
from utils.config import (PRESETS, RUN_CONTROL, add_common_args, amp_dtype, build_net, check_config, check_split,
                          resolve, run_keys)
from utils.precision import check_cpu_amp
from utils.ramps import sigmoid_rampup
from utils.run_control import RunControl, mean_over_ranks
from utils.seeding import step_generator


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
    g.add_argument('--amp', action='store_true',
                   help='mixed precision: float16 autocast and a gradient scaler on CUDA, bfloat16 autocast on the CPU')
    g.add_argument('--deterministic', type=int, default=1, choices=[0, 1], help='deterministic cuDNN algorithms')
    g.add_argument('--sync_bn', action='store_true', help='SyncBatchNorm under torchrun (default: per-GPU BN)')
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


def dual_step(net_a, net_b, opt_a, opt_b, scaler, image, label, it, generator, *, labeled_bs, alpha_mc, lambda_reg,
              lambda_urps, lambda_cps, lambda_con, rampup, ramp_unsup, conf_thresh, uncertain_percent, cps_filter,
              contrast_tau, contrast_samples, mean_over_ranks=None, amp=None):
    """One training iteration of the method, docs/method.md's terms 1 to 8 in its order: both forward passes on the
    batch (image (B, 1, X, Y, Z), label (B, X, Y, Z), the first labeled_bs volumes labeled) under autocast in `amp`
    (None: float32), the terms with their flags' weights (0 skips a term), the total, one backward pass through
    the gradient scaler and a step of each network's optimiser. `it` drives the ramps, `generator` draws the
    contrastive samples; mean_over_ranks(tensor) averages over torchrun's processes (None: one process).

    Returns (total, record, extra): total the 0-d loss (term 8); record {name: 0-d tensor}: 'loss' (= total), sup_a,
    sup_b, dice_a, dice_b, mc_a, mc_b, reg, urps, cps_a, cps_b, con (0 when off), the labeled volumes' foreground
    share label_fg, and the pseudo-label shares reliable (R's share of unlabeled voxels), pseudo_fg (yhat's
    foreground share) and reliable_fg (foreground share within R), 0 without pseudo-labels; extra {'winner': a 0-d
    bool tensor, True where A wins (nothing here waits for the device), 'lambda_con': the ramped contrastive weight,
    'unsup_weight': the factor on L_reg, L_urps and L_cps (1 with ramp_unsup off)}. train.py logs record and extra,
    by these names, as iterations.csv columns (the winner as A or B)."""
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
        lambda_c = lambda_con * ramp
        con = zero
        if lambda_con > 0:
            loser_feat = torch.where(a_wins, feat_b[lb:], feat_a[lb:])
            loser_prob = torch.where(a_wins, prob_b[lb:], prob_a[lb:])
            con = prototype_contrastive_loss(loser_feat, loser_prob, pseudo, reliable, contrast_tau, contrast_samples,
                                             generator)

        # 8. the total; ramp_unsup holds back the terms that learn from the networks' own early guesses, which at
        # full weight from iteration 0 can agree on background everywhere and never leave it
        unsup = ramp if ramp_unsup else 1.0
        total = (sup_a + sup_b + alpha_mc * (mc_a + mc_b) + unsup * lambda_cps * (cps_a + cps_b)
                 + unsup * (lambda_reg * reg + lambda_urps * urps) + lambda_c * con)
    backward_and_step(total, (opt_a, opt_b), scaler)  # one backward pass; each network steps its own SGD

    record = dict(loss=total, sup_a=sup_a, sup_b=sup_b, dice_a=dice_a, dice_b=dice_b, mc_a=mc_a, mc_b=mc_b,
                  reg=reg, urps=urps, cps_a=cps_a, cps_b=cps_b, con=con, label_fg=(label[:lb] > 0).float().mean(),
                  reliable=zero, pseudo_fg=zero, reliable_fg=zero)
    if reliable is not None:  # is R the class mix of yhat? (a filter can starve R of foreground)
        fg = pseudo > 0
        record.update(reliable=reliable.float().mean(), pseudo_fg=fg.float().mean(),
                      reliable_fg=(fg & reliable).sum() / reliable.sum().clamp_min(1))
    return total, record, {'winner': a_wins, 'lambda_con': lambda_c, 'unsup_weight': unsup}


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
                     uncertain_percent=cfg['uncertain_percent'], cps_filter=cfg['filter'],
                     contrast_tau=cfg['contrast_tau'], contrast_samples=cfg['contrast_samples'],
                     mean_over_ranks=mean_over_ranks, amp=amp)


def load_data(cfg, run):
    """The training set and the validation set (None without --val_list/--val_every), every case read once."""
    if cfg['dataset'] == 'synthetic' and run.is_main:
        from dataloaders.synthetic import make_synthetic_dataset
        make_synthetic_dataset(cfg['root_path'], num_classes=cfg['num_classes'])
    run.barrier()  # the phantoms exist before any rank reads them
    train_set = build_dataset(cfg, transform=train_transform(cfg))
    check_split(cfg, len(train_set), run.world_size)
    val_set = (build_dataset(cfg, list_file=cfg['val_list'], transform=NormalizeIntensity(cfg['normalize']))
               if cfg['val_list'] and cfg['val_every'] > 0 else None)
    if run.is_main:  # a bad file stops us here, not hours into training
        for dataset in (train_set, val_set):
            if dataset is not None:
                dataset.validate(cfg['num_classes'])
    return train_set, val_set


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
    run = RunControl(cfg, run_keys(build_parser()))  # the device, torchrun's process group, the seeds
    amp = amp_dtype(run.device) if cfg['amp'] else None
    check_cpu_amp(amp, run.device, cfg['patch_size'], cfg['n_filters'], cfg['channels_last'])

    # --- data: check the folder first; the import recipe travels with the model (segment.py applies it) ---
    train_set, val_set = load_data(cfg, run)
    cfg['recipe'] = read_recipe(cfg['root_path'])

    # --- networks and optimisers: one SGD per network; the same initial weights on every rank ---
    nets = build_networks(cfg, run.device)
    memory_format = torch.channels_last_3d if cfg['channels_last'] else torch.contiguous_format
    for net in nets.values():
        net.to(memory_format=memory_format)
    torch.manual_seed(cfg['seed'] + run.rank)  # but each rank its own dropout masks
    optimizers = build_optimizers(cfg, nets)
    scaler = grad_scaler(amp)
    if run.start(nets, optimizers, scaler, len(train_set), val_set) >= cfg['max_iterations']:
        return  # resumed at the end of the run: nothing to do
    train_nets = run.distribute(nets)  # under torchrun, DDP wrappers that average the gradients over ranks

    # --- the loop: the iteration's learning rate and batch, one training step, the run's records ---
    with run.stop_signals():  # SIGINT / SIGTERM: finish the step, save, exit
        for it, batch in run.batches(train_set, batch_sampler(cfg, len(train_set), run.rank, run.world_size)):
            lr = cfg['base_lr'] * 0.1 ** (it // cfg['lr_step'])
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group['lr'] = lr
            image = batch['image'].to(run.device, non_blocking=True).contiguous(memory_format=memory_format)
            label = batch['label'].to(run.device, non_blocking=True)
            generator = step_generator(cfg['seed'] + run.rank, it, run.device)  # the same draws after a resume
            _, record, extra = train_step(train_nets, optimizers, scaler, image, label, cfg, it, generator, amp,
                                          mean_over_ranks)
            run.record(it, lr, record, extra, image, label)  # iterations.csv, log.txt, TensorBoard; stops on NaN
            run.after_step(it)  # validation and best.pth, latest.pth; on a stop signal: save and exit
    run.finish()  # final.pth and the closing log line


if __name__ == '__main__':
    run_cli(main)
