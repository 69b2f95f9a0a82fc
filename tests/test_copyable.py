"""The parts a fork copies, copied alone: each module of networks/ and losses/, the dataset, transforms and
samplers of dataloaders/, utils/inference.py and utils/metrics.py import only the standard library, torch,
numpy, scipy, tqdm, h5py and modules of their own folder.

Each test copies the module plus the same-folder modules it imports (transitively) into an empty folder, laid
out as <folder>/<file>.py beside an empty <folder>/__init__.py, and runs a snippet in a fresh interpreter whose
only path entry besides the installed packages is that folder: import the module and call one function on tiny
inputs. A copy that needs anything else fails with ImportError there.
"""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THIRD_PARTY = {'torch', 'numpy', 'scipy', 'tqdm', 'h5py'}

# module -> a snippet that exercises it (it may use the names of the copied folder only)
SNIPPETS = {
    'networks/vnet.py': '''
import torch
from networks.vnet import VNet
out = VNet(n_channels=1, n_classes=2, n_filters=2).eval()(torch.zeros(1, 1, 16, 16, 16))
assert out[0].shape == (1, 2, 16, 16, 16), out[0].shape
''',
    'networks/resnet_vnet.py': '''
import torch
from networks.resnet_vnet import ResNet34VNet
out = ResNet34VNet(n_channels=1, n_classes=2, n_filters=2).eval()(torch.zeros(1, 1, 16, 16, 16))
assert out[0].shape == (1, 2, 16, 16, 16), out[0].shape
''',
    'losses/precision.py': '''
import torch
from losses.precision import widen
assert widen(torch.zeros(2, dtype=torch.float16)).dtype == torch.float32
''',
    'losses/supervised.py': '''
import torch
from losses.supervised import dice_loss
assert abs(dice_loss(torch.ones(2, 3), torch.ones(2, 3)).item()) < 1e-6
''',
    'losses/mutual_correction.py': '''
import torch
from losses.mutual_correction import confident_disagreement, mutual_correction_loss
p = torch.full((1, 2, 2, 2, 2), 0.5)
assert mutual_correction_loss(p, torch.zeros(1, 2, 2, 2, dtype=torch.long), confident_disagreement(p, p)).item() == 0
''',
    'losses/consistency.py': '''
import torch
from losses.consistency import cosine_consistency_loss
p = torch.softmax(torch.randn(1, 2, 2, 2, 2), dim=1)
assert abs(cosine_consistency_loss(p, p).item()) < 1e-6
''',
    'losses/urps.py': '''
import torch
from losses.urps import urps_loss
z = torch.randn(1, 2, 2, 2, 2)
assert torch.isfinite(urps_loss(z, torch.softmax(z, dim=1)))
''',
    'losses/cross_pseudo.py': '''
import torch
from losses.cross_pseudo import cps_loss, cross_pseudo_label
z = torch.randn(1, 2, 4, 4, 4)
pseudo, reliable = cross_pseudo_label(torch.softmax(z, 1), torch.softmax(z, 1))
assert torch.isfinite(cps_loss(z, pseudo, reliable))
''',
    'losses/contrastive.py': '''
import torch
from losses.contrastive import prototype_contrastive_loss
g = torch.Generator().manual_seed(0)
f = torch.randn(1, 3, 4, 4, 4, generator=g)
prob = torch.softmax(torch.randn(1, 2, 4, 4, 4, generator=g), 1)
pseudo, reliable = torch.randint(0, 2, (1, 4, 4, 4), generator=g), torch.rand(1, 4, 4, 4, generator=g) > 0.5
assert prototype_contrastive_loss(f, prob, pseudo, reliable, 0.1, 8, g) > 0
''',
    'losses/mean_teacher.py': '''
import torch
from losses.mean_teacher import softmax_mse_loss
z = torch.randn(1, 2, 2, 2, 2)
assert softmax_mse_loss(z, z).item() == 0
''',
    'dataloaders/datasets.py': '''
import h5py, numpy as np
from dataloaders.datasets import H5Dataset
with h5py.File('case1.h5', 'w') as f:
    f['image'] = np.zeros((8, 8, 8), np.float32)
    f['label'] = np.ones((8, 8, 8), np.uint8)
open('train.list', 'w').write('case1\\n')
sample = H5Dataset('.', pattern='{id}.h5')[0]
assert sample['image'].shape == (8, 8, 8) and sample['label'].sum() == 512
''',
    'dataloaders/transforms.py': '''
import numpy as np
from dataloaders.transforms import RandomCrop
out = RandomCrop((4, 4, 2))({'image': np.zeros((6, 6, 6), np.float32), 'label': np.zeros((6, 6, 6), np.uint8)},
                            np.random.default_rng(0))
assert out['image'].shape == (4, 4, 2) and out['label'].shape == (4, 4, 2)
''',
    'dataloaders/samplers.py': '''
from dataloaders.samplers import TwoStreamBatchSampler
batches = list(TwoStreamBatchSampler(range(4), range(4, 10), 4, 2))
assert len(batches) == 2 and all(b[0] < 4 and b[1] < 4 and b[2] >= 4 and b[3] >= 4 for b in batches)
''',
    'utils/metrics.py': '''
import numpy as np
from utils.metrics import calculate_metric_percase
mask = np.zeros((8, 8, 8), bool)
mask[2:6, 2:6, 2:6] = True
assert calculate_metric_percase(mask, mask)[:2] == (1.0, 1.0)
''',
    'utils/inference.py': '''
import numpy as np, torch
from utils.inference import test_single_case
class Net(torch.nn.Module):  # class 1 where the input is positive
    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x], dim=1)
image = -np.ones((32, 32, 32), np.float32)
image[8:20, 8:20, 8:20] = 1
label, score = test_single_case(Net(), image, 8, 8, (16, 16, 16), 2)
assert np.array_equal(label, image > 0) and score.shape == (2, 32, 32, 32)
''',
}


def imports_of(path):
    """(top-level names imported absolutely, same-folder modules imported) of one module."""
    folder = path.parent.name
    outside, inside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            names = [node.module] if node.module else [a.name for a in node.names]
            inside |= {n.split('.')[0] for n in names}
        elif isinstance(node, ast.ImportFrom):
            parts = node.module.split('.')
            if parts[0] == folder:
                inside |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
            else:
                outside.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split('.')
                if parts[0] == folder and len(parts) > 1:
                    inside.add(parts[1])
                else:
                    outside.add(parts[0])
    return outside, inside


def with_dependencies(relative):
    """The module and the same-folder modules it imports, transitively, as paths relative to the repository."""
    todo, found = [REPO / relative], set()
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.add(path)
        todo += [path.parent / f'{name}.py' for name in imports_of(path)[1]]
    return sorted(p.relative_to(REPO) for p in found)


@pytest.mark.parametrize('relative', SNIPPETS)
def test_module_imports_only_its_folder_and_the_allowed_packages(relative):
    for path in with_dependencies(relative):
        outside = imports_of(REPO / path)[0] - THIRD_PARTY - set(sys.stdlib_module_names)
        assert not outside, f'{path} imports {sorted(outside)}'


@pytest.mark.parametrize('relative', SNIPPETS)
def test_module_copied_alone_runs(relative, tmp_path):
    for path in with_dependencies(relative):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        shutil.copyfile(REPO / path, tmp_path / path)
    (tmp_path / Path(relative).parent / '__init__.py').write_text('')
    # the snippet's own check, then: nothing was loaded from the repository
    code = SNIPPETS[relative] + (f'\nimport sys\nleaks = [m for m, mod in list(sys.modules.items()) '
                                 f'if str(getattr(mod, "__file__", None) or "").startswith({str(REPO)!r})]\n'
                                 f'assert not leaks, leaks\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith('PYTHON')}
    env['PYTHONPATH'] = str(tmp_path)
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize('folder', ['networks', 'losses', 'dataloaders', 'importers', 'utils'])
def test_folder_init_imports_only_its_folder(folder):
    outside = imports_of(REPO / folder / '__init__.py')[0] - THIRD_PARTY - set(sys.stdlib_module_names)
    assert not outside, f'{folder}/__init__.py imports {sorted(outside)}'


def test_cli_recognises_user_errors_without_importing_the_packages_that_define_them():
    from dataloaders import DatasetError
    from dataloaders.synthetic import SyntheticDataError
    from importers.volumes import VolumeError
    from utils.checkpoint import CheckpointError
    from utils.cli import UsageError, is_user_error
    assert imports_of(REPO / 'utils' / 'cli.py')[0] <= set(sys.stdlib_module_names)
    for error in (UsageError, DatasetError, SyntheticDataError, VolumeError, CheckpointError, FileNotFoundError):
        assert is_user_error(error('x')), error
    assert not is_user_error(ValueError('x')) and not is_user_error(RuntimeError('x'))
