"""The copyable modules work as single files: each of networks/vnet.py, losses/terms.py, losses/mean_teacher.py,
dataloaders/datasets.py, dataloaders/transforms.py, dataloaders/samplers.py, utils/ramps.py, utils/metrics.py and
utils/inference.py is copied alone into an empty folder and imported there by its own name (`import terms`).

For each, a fresh interpreter runs with that folder as its working directory and PYTHONPATH unset, so besides the
installed packages (the standard library, torch, numpy, scipy, tqdm, h5py) it sees only the one copied file. The
snippet imports the module, calls a function on tiny inputs and asserts a known value or shape, then asserts that
nothing was loaded from the repository. A module that imports a sibling (`from .x`, `from utils.x`) fails there.
networks/resnet_vnet.py is not copyable alone: it reuses vnet.py's decoder.

The other tests here check layering: what each folder's __init__.py and utils/cli.py may import.
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

# module -> a snippet run beside its lone copy; each asserts values or shapes the module must produce
SNIPPETS = {
    'networks/vnet.py': '''
import torch
import vnet
assert sum(p.numel() for p in vnet.VNet(n_channels=1, n_classes=2, n_filters=16).parameters()) == 9448866
logits, features = vnet.VNet(n_channels=1, n_classes=2, n_filters=2).eval()(torch.zeros(1, 1, 16, 16, 16))
assert logits.shape == (1, 2, 16, 16, 16) and features.shape == (1, 2, 16, 16, 16), (logits.shape, features.shape)
''',
    'losses/terms.py': '''
import math
import torch
import terms
a = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1, 1)
assert terms.cosine_consistency_loss(a, a.flip(1)).item() == 1.0  # orthogonal: 1 - cos = 1
assert terms.cosine_consistency_loss(a.bfloat16(), a.bfloat16()).dtype == torch.float32  # widened
# URPS, loser uniform over 2 classes, winner (0.75, 0.25): exp(-KL) * CE + KL with CE = log 2
kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
winner = torch.tensor([0.75, 0.25], dtype=torch.float64).reshape(1, 2, 1, 1, 1)
loss = terms.urps_loss(torch.zeros(1, 2, 1, 1, 1, dtype=torch.float64), winner).item()
assert abs(loss - (math.exp(-kl) * math.log(2) + kl)) < 1e-12, loss
''',
    'losses/mean_teacher.py': '''
import math
import torch
import mean_teacher
student = torch.zeros(1, 2, 1, 1, 1)
teacher = torch.tensor([math.log(3.0), 0.0]).reshape(1, 2, 1, 1, 1)  # softmax (0.75, 0.25)
assert abs(mean_teacher.softmax_mse_loss(student, teacher).item() - 0.0625) < 1e-7  # 0.25 ** 2 on both classes
assert mean_teacher.softmax_mse_loss(student.half(), teacher.half()).dtype == torch.float32  # widened
''',
    'dataloaders/datasets.py': '''
import h5py, numpy as np
import datasets
with h5py.File('case1.h5', 'w') as f:
    f['image'] = np.zeros((8, 8, 8), np.float32)
    f['label'] = np.ones((8, 8, 8), np.uint8)
open('train.list', 'w').write('case1\\n')
sample = datasets.H5Dataset('.', pattern='{id}.h5')[0]
assert sample['image'].shape == (8, 8, 8) and sample['label'].sum() == 512
''',
    'dataloaders/transforms.py': '''
import numpy as np
import transforms
image = np.arange(216, dtype=np.float32).reshape(6, 6, 6)
out = transforms.RandomCrop((4, 4, 2))({'image': image, 'label': (image % 2).astype(np.uint8)},
                                      np.random.default_rng(0))
x, y, z = np.argwhere(image == out['image'][0, 0, 0])[0]  # the crop is one block of the volume
assert np.array_equal(out['image'], image[x:x + 4, y:y + 4, z:z + 2])
assert np.array_equal(out['label'], image[x:x + 4, y:y + 4, z:z + 2] % 2)
''',
    'dataloaders/samplers.py': '''
import samplers
batches = list(samplers.TwoStreamBatchSampler(range(4), range(4, 10), 4, 2))
assert len(batches) == 2 and all(b[0] < 4 and b[1] < 4 and b[2] >= 4 and b[3] >= 4 for b in batches)
''',
    'utils/ramps.py': '''
import math
import ramps
assert ramps.sigmoid_rampup(0, 10) == math.exp(-5) and ramps.sigmoid_rampup(5, 10) == math.exp(-1.25)
assert ramps.sigmoid_rampup(10, 10) == ramps.sigmoid_rampup(20, 10) == 1.0
''',
    'utils/metrics.py': '''
import numpy as np
import metrics
mask = np.zeros((8, 8, 8), bool)
mask[2:6, 2:6, 2:6] = True
assert metrics.calculate_metric_percase(mask, mask) == (1.0, 1.0, 0.0, 0.0)
shifted = np.roll(mask, 1, axis=0)  # 48 of 64 voxels shared
assert metrics.case_metrics(shifted, mask, 2)['dice'] == 2 * 48 / 128
pred = mask.astype(np.int64)
pred[7, 7, 7] = 1  # a stray voxel, not connected to the cube
assert np.array_equal(metrics.keep_largest_components(pred, 2), mask)
''',
    'utils/inference.py': '''
import numpy as np, torch
import inference
class Net(torch.nn.Module):  # class 1 where the input is positive
    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x], dim=1)
image = -np.ones((32, 32, 32), np.float32)
image[8:20, 8:20, 8:20] = 1
label, score = inference.test_single_case(Net(), image, 8, 8, (16, 16, 16), 2)
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


@pytest.mark.parametrize('relative', SNIPPETS)
def test_module_imports_only_the_allowed_packages(relative):
    # the same failure as the run below, with the offending import named
    outside, inside = imports_of(REPO / relative)
    outside -= THIRD_PARTY | set(sys.stdlib_module_names)
    assert not outside and not inside, f'{relative} imports {sorted(outside | inside)}'


@pytest.mark.parametrize('relative', SNIPPETS)
def test_module_copied_alone_runs(relative, tmp_path):
    shutil.copyfile(REPO / relative, tmp_path / Path(relative).name)
    assert [p.name for p in tmp_path.iterdir()] == [Path(relative).name]
    code = SNIPPETS[relative] + (f'\nimport sys\nleaks = [m for m, mod in list(sys.modules.items()) '
                                 f'if str(getattr(mod, "__file__", None) or "").startswith({str(REPO)!r})]\n'
                                 f'assert not leaks, leaks\n')
    assert f'import {Path(relative).stem}\n' in code
    env = {k: v for k, v in os.environ.items() if not k.startswith('PYTHON')}
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize('folder', ['networks', 'losses', 'dataloaders', 'importers', 'utils'])
def test_folder_init_imports_only_its_folder(folder):
    outside = imports_of(REPO / folder / '__init__.py')[0] - THIRD_PARTY - set(sys.stdlib_module_names)
    assert not outside, f'{folder}/__init__.py imports {sorted(outside)}'


def test_cli_recognises_user_errors_without_importing_the_packages_that_define_them():
    from dataloaders.datasets import DatasetError
    from dataloaders.synthetic import SyntheticDataError
    from importers.volumes import VolumeError
    from utils.checkpoint import CheckpointError
    from utils.cli import UsageError, is_user_error
    assert imports_of(REPO / 'utils' / 'cli.py')[0] <= set(sys.stdlib_module_names)
    for error in (UsageError, DatasetError, SyntheticDataError, VolumeError, CheckpointError, FileNotFoundError):
        assert is_user_error(error('x')), error
    assert not is_user_error(ValueError('x')) and not is_user_error(RuntimeError('x'))
