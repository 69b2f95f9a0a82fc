"""The contrastive term (L_con) alone at LA size: the current prototype_contrastive_loss against another revision's.

    python -m benchmarks.contrastive                          # against the memory-optimised version of d681047
    python -m benchmarks.contrastive --baseline HEAD~3 --repeats 5

Inputs as train.py gives them at the LA setting (batch 4, 2 labeled, n_filters 16, patch 112x112x80,
--contrast_samples 2048): the loser's features of the 2 unlabeled volumes (2, 16, 112, 112, 80) float32,
its probabilities, and a pseudo-label and reliable mask. One call is forward + backward of the term. Prints,
for each version, the fastest call (both interleaved round by round, so the load of a shared machine weighs
on both alike) and the peak memory of one call over the inputs (peak RSS minus the RSS before the call,
each version in a fresh process), the ratios current / baseline, and how far the values and gradients
agree (same generator seed: the same voxels are drawn).
"""
import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import timed_side_by_side
from losses import prototype_contrastive_loss

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (2, 16, 112, 112, 80)  # unlabeled volumes, feature channels (= n_filters), patch


def baseline_function(revision):
    """prototype_contrastive_loss as the losses package defines it at `revision` (git): that revision's whole
    losses/ folder is written to a temporary folder under another package name and imported from there, so its
    relative imports resolve among its own files (losses/terms.py today, losses/contrastive.py before it)."""
    def git(*command):
        return subprocess.run(['git', *command], cwd=ROOT, check=True, capture_output=True, text=True).stdout

    package = Path(tempfile.mkdtemp()) / 'losses_baseline'
    package.mkdir()
    for name in git('ls-tree', '--name-only', f'{revision}:losses').split():
        if name.endswith('.py'):
            (package / name).write_text(git('show', f'{revision}:losses/{name}'))
    spec = importlib.util.spec_from_file_location('losses_baseline', package / '__init__.py',
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules['losses_baseline'] = module
    spec.loader.exec_module(module)
    return module.prototype_contrastive_loss


def inputs(seed=0):
    """LA-size inputs without large temporaries (so a peak RSS reads as the term's own): about 15 % foreground,
    three quarters of the voxels reliable, features post-ReLU."""
    g = torch.Generator().manual_seed(seed)
    b, n_features, *size = SHAPE
    features = torch.randn(SHAPE, generator=g).relu_()
    fg = torch.rand((b, 1, *size), generator=g)
    prob = torch.cat([1 - fg, fg], dim=1)
    pseudo = (torch.rand((b, *size), generator=g) < 0.15).long()
    reliable = torch.rand((b, *size), generator=g) < 0.75
    return features, prob, pseudo, reliable


def call(fn, data, samples, seed=1):
    features, prob, pseudo, reliable = data
    f = features.detach().requires_grad_()
    loss = fn(f, prob, pseudo, reliable, 0.1, samples, torch.Generator().manual_seed(seed))
    loss.backward()
    return loss.detach(), f.grad


def memory_mib(field):
    """VmRSS (now) or VmHWM (peak) of this process in MiB. Not ru_maxrss: Linux carries that across exec,
    so a child would start with its parent's peak."""
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':')) / 1024  # kB


def memory_probe(args):
    """One version's peak memory over its inputs, in this (fresh) process: printed as JSON."""
    fn = prototype_contrastive_loss if args._memory_probe == 'current' else baseline_function(args.baseline)
    data = inputs()
    rss_before, peak_before = memory_mib('VmRSS'), memory_mib('VmHWM')
    call(fn, data, args.samples)
    peak = memory_mib('VmHWM')
    # a peak not above the one before the call is not the call's: report it as unmeasured
    print(json.dumps({'mib': peak - rss_before if peak > peak_before else None}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--baseline', default='d681047', help='git revision whose prototype_contrastive_loss is compared')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--samples', type=int, default=2048, help='--contrast_samples')
    p.add_argument('--threads', type=int, default=None, help="CPU threads (torch's default: one per core)")
    p.add_argument('--_memory_probe', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args._memory_probe is not None:
        return memory_probe(args)

    fns = {'current': prototype_contrastive_loss, 'baseline': baseline_function(args.baseline)}
    data = inputs()
    print(f'features {tuple(SHAPE)} float32, contrast_samples {args.samples}, baseline {args.baseline}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}', flush=True)
    (loss_c, grad_c), (loss_b, grad_b) = (call(fn, data, args.samples) for fn in fns.values())
    print(f'agreement: loss {loss_c.item():.6f} vs {loss_b.item():.6f}, max |loss diff| '
          f'{(loss_c - loss_b).abs().item():.2e}, max |grad diff| {(grad_c - grad_b).abs().max().item():.2e} '
          f'(max |grad| {grad_b.abs().max().item():.2e}), same voxels with gradient '
          f'{torch.equal(grad_c.norm(dim=1) > 0, grad_b.norm(dim=1) > 0)}')
    seconds = timed_side_by_side({k: (lambda fn=fn: call(fn, data, args.samples)) for k, fn in fns.items()},
                                 'cpu', args.repeats)
    memory = {}
    for name in fns:
        out = subprocess.run([sys.executable, '-m', 'benchmarks.contrastive', '--baseline', args.baseline,
                              '--samples', str(args.samples), '--_memory_probe', name]
                             + ['--threads', str(args.threads)] * (args.threads is not None),
                             cwd=ROOT, capture_output=True, text=True, check=True)
        memory[name] = json.loads(out.stdout.strip().splitlines()[-1])['mib']
    print(f'{"":10} {"seconds":>9} {"peak MiB":>9}')
    for name in fns:
        mib = 'n/a' if memory[name] is None else f'{memory[name]:.0f}'
        print(f'{name:10} {seconds[name]:9.3f} {mib:>9}')
    ratio = ('n/a' if None in memory.values() else f'{memory["current"] / memory["baseline"]:.2f}')
    print(f'{"ratio":10} {seconds["current"] / seconds["baseline"]:9.2f} {ratio:>9}   (current / baseline)')


if __name__ == '__main__':
    main()
