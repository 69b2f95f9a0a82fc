"""How big the core is: what `import train` and `import test` load, and how much of it is the method.

    python -m benchmarks.core_size

Each script is imported in a fresh interpreter; every module it loads from this repository is counted with
its lines. The method is networks/, losses/, the batch sampler and train.py's step functions; the run machinery
is every utils/ module train.py loads except the evaluation code (inference, metrics) and the ramps. Also
printed: whether a scan reader or a module of importers/ or benchmarks/ was loaded, the lines of train.py's loop,
and the files one training iteration goes through. docs/reading.md keeps today's figures.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

from utils.cli import OneLineParser, run_cli

REPO = Path(__file__).resolve().parents[1]
SCAN_READERS = ('nibabel', 'nrrd', 'pydicom', 'SimpleITK')
# The files one training iteration of the method goes through, from the flag defaults to the optimiser step.
ITERATION_FILES = ('train.py', 'dataloaders/samplers.py', 'dataloaders/datasets.py', 'dataloaders/transforms.py',
                   'networks/vnet.py', 'networks/resnet_vnet.py', 'losses/terms.py', 'utils/ramps.py')
STEP_FUNCTIONS = ('grad_scaler', 'backward_and_step', 'dual_step', 'mt_step', 'add_noise', 'update_ema', 'sup_step',
                  'train_step')
UNTIMED_UTILS = ('utils/inference.py', 'utils/metrics.py', 'utils/ramps.py', 'utils/__init__.py')

LOADER = '''
import json, os, sys
import {module}
files = [os.path.relpath(m.__file__) for m in list(sys.modules.values())
         if getattr(m, '__file__', None) and os.path.isabs(m.__file__) and m.__file__.startswith(os.getcwd() + os.sep)]
print(json.dumps({{'files': sorted(files), 'readers': sorted(r for r in {readers!r} if r in sys.modules)}}))
'''


def lines(path):
    return len((REPO / path).read_text().splitlines())


def loaded(module):
    """({repository file: lines} that `import module` loads, the scan readers among the loaded packages). With -c,
    Python puts the working folder, here the repository, first on the module path."""
    out = subprocess.run([sys.executable, '-c', LOADER.format(module=module, readers=SCAN_READERS)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return {f: lines(f) for f in found['files']}, found['readers']


def function_lines(path, names):
    """Lines of the top-level functions `names` of a file, their decorators included."""
    tree = ast.parse((REPO / path).read_text())
    return sum(node.end_lineno - min([node.lineno] + [d.lineno for d in node.decorator_list]) + 1
               for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names)


def loop_lines():
    """Lines of train.py's loop: from the StopSignals block to the exit on a signal."""
    text = (REPO / 'train.py').read_text().splitlines()
    start = next(i for i, line in enumerate(text) if 'with StopSignals() as stop' in line)
    end = next(i for i in range(start, len(text)) if 'sys.exit(128' in text[i])
    return end - start + 1


def measure():
    train, train_readers = loaded('train')
    test, test_readers = loaded('test')
    method = (sum(n for f, n in train.items() if f.startswith(('networks/', 'losses/')))
              + train.get('dataloaders/samplers.py', 0) + function_lines('train.py', STEP_FUNCTIONS))
    machinery = {f: n for f, n in train.items() if f.startswith('utils/') and f not in UNTIMED_UTILS}
    doors = sorted(f for f in {**train, **test} if f.startswith(('importers/', 'benchmarks/')))
    return {'train_modules': len(train), 'train_lines': sum(train.values()), 'test_modules': len(test),
            'test_lines': sum(test.values()), 'method_lines': method, 'machinery_lines': sum(machinery.values()),
            'machinery': machinery, 'doors_loaded': doors, 'scan_readers_loaded': train_readers + test_readers,
            'loop_lines': loop_lines(), 'iteration_files': len(ITERATION_FILES),
            'readme_lines': lines('README.md'), 'train_files': train, 'test_files': test}


def main(argv=None):
    OneLineParser(description=__doc__.split('\n')[0]).parse_args(argv)
    m = measure()
    print(f'import train: {m["train_modules"]} modules, {m["train_lines"]} lines; the method (networks/, losses/, '
          f'the sampler, the step functions) {m["method_lines"]} lines = {m["method_lines"] / m["train_lines"]:.0%}')
    print(f'import test:  {m["test_modules"]} modules, {m["test_lines"]} lines')
    print(f'run machinery train.py loads: {m["machinery_lines"]} lines in ' + ', '.join(
        f'{f} {n}' for f, n in sorted(m['machinery'].items())))
    print(f'importers/ or benchmarks/ loaded: {m["doors_loaded"] or "none"}; scan readers loaded: '
          f'{m["scan_readers_loaded"] or "none"}')
    print(f'the loop: {m["loop_lines"]} lines; one iteration: {m["iteration_files"]} files ({", ".join(ITERATION_FILES)})')
    print(f'README.md: {m["readme_lines"]} lines')


if __name__ == '__main__':
    run_cli(main)
