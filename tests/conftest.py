import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

# Tests import the project's folders the way the scripts do: from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The columns of iterations.csv after 'iteration', per method, in order: the lr, the logged record of the
# method's losses, then its extra values (written out here, not read from train.py).
ITERATION_COLUMNS = {
    'dual': ['lr', 'loss', 'sup_a', 'sup_b', 'dice_a', 'dice_b', 'mc_a', 'mc_b', 'reg', 'urps', 'cps_a', 'cps_b',
             'con', 'label_fg', 'reliable', 'pseudo_fg', 'reliable_fg', 'winner', 'con_weight', 'unsup_weight'],
    'mt': ['lr', 'loss', 'sup', 'dice', 'consistency', 'consistency_weight'],
    'sup': ['lr', 'loss', 'sup', 'dice'],
}


def pytest_configure(config):
    # benchmarks/gpu_check.py runs `pytest -m cuda`: the tests that exercise a CUDA device (skipped without one)
    config.addinivalue_line('markers', 'cuda: needs a CUDA device; skipped without one')


@pytest.fixture(autouse=True)
def true_float32_on_cuda(request):
    """Tests marked cuda compare with the CPU in true float32: cuDNN's own default runs float32 convolutions
    in TF32 on Ampere and later GPUs, whose rounding is far above their tolerances."""
    if request.node.get_closest_marker('cuda') is not None:
        from utils.device import set_tf32
        set_tf32(False)
    yield


@pytest.fixture(scope='session')
def phantoms(tmp_path_factory):
    """8 training + 2 test phantoms of 32^3 voxels in the LA layout, made once per session."""
    from dataloaders.synthetic import make_synthetic_dataset
    return make_synthetic_dataset(tmp_path_factory.mktemp('phantoms') / 'data', num_train=8, num_test=2,
                                  shape=(32, 32, 32), seed=0)


@pytest.fixture(scope='module')
def one_thread():
    """Tiny volumes train faster on one thread, and a test's processes do not fight over cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_argv(data, run, *extra, **flags):
    """argv of a tiny train.py run: 16^3 patches, n_filters 2, batches of 1 labeled + 1 unlabeled volume."""
    base = dict(dataset='la', root_path=data, patch_size='16,16,16', n_filters=2, gpu=-1, batch_size=2,
                labeled_bs=1, labelnum=4, max_iterations=4, num_workers=0, snapshot_path=run)
    base.update(flags)
    return [s for k, v in base.items() for s in (f'--{k}', str(v))] + list(extra)


def require_extra(module):
    """Import an optional extra a test needs: skip without it, except under CI=true, where .ci/run installs
    every extra and a missing one must fail the run rather than silently skip the tests of its code."""
    if os.environ.get('CI') == 'true':
        return importlib.import_module(module)
    return pytest.importorskip(module)


def one_line_error(main, argv):
    """The message an importer exits with for bad input, run as its command runs it (utils.cli.run_cli):
    one line, 'error: ...'."""
    from utils.cli import run_cli
    with pytest.raises(SystemExit) as info:
        run_cli(main, argv)
    message = str(info.value.code)
    assert message.startswith('error: ') and '\n' not in message
    return message
