""".ci/run fails when the quick start trains worse than the README's stated floor, not only when it crashes."""
import importlib.util
import json
from pathlib import Path

import pytest

import train

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('check_quickstart', REPO / '.ci' / 'check_quickstart.py')
check_quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_quickstart)


def summary(path, dice):
    path.write_text(json.dumps({'metrics': {'dice': {'mean': dice, 'std': 0.01}}}))
    return path


def test_a_dice_below_the_readme_floor_fails_in_one_line(tmp_path):
    """A run that trains nothing (Dice 0.02) or too little (0.84) fails; 0.85 and above pass."""
    readme = tmp_path / 'README.md'
    readme.write_text('The quick start reaches a mean Dice of\nat least 85 % on the 10 test phantoms.\n')
    for dice in (0.02, 0.849):
        with pytest.raises(SystemExit) as e:
            check_quickstart.check(readme, summary(tmp_path / 's.json', dice))
        message = str(e.value.code)
        assert 'below the README' in message and '85 %' in message and '\n' not in message
    assert '85.00 %' in check_quickstart.check(readme, summary(tmp_path / 's.json', 0.85))
    readme.write_text('No floor here.\n')
    with pytest.raises(SystemExit, match='states no quick-start floor'):
        check_quickstart.check(readme, summary(tmp_path / 's.json', 0.9))


def test_ci_checks_the_real_readme_floor_on_the_quick_starts_summary(tmp_path):
    """The README states a floor of at least 85 %, and .ci/run reads the summary where test.py writes it."""
    found = check_quickstart.FLOOR.search(' '.join((REPO / 'README.md').read_text().split()))
    assert found and float(found.group(1)) >= 85
    run_dir = train.parse_args(['--dataset', 'synthetic'])['snapshot_path']
    ci = (REPO / '.ci' / 'run').read_text()
    assert f'python .ci/check_quickstart.py README.md "$scratch/{run_dir}/test_summary.json"' in ci
