"""CI: fail when the README's quick start trains worse than the README says it does.

    python .ci/check_quickstart.py README.md model/synthetic/dual_dual_8labels/test_summary.json

Reads the floor from the README's sentence "the quick start reaches a mean Dice of at least N %" and the
mean Dice from test.py's test_summary.json; exits 1 with one line when the Dice is below the floor (a change
that trains nothing, or trains badly, passes every exit-code check but not this one).
"""
import json
import re
import sys
from pathlib import Path

FLOOR = re.compile(r'quick start reaches a mean Dice of at least (\d+(?:\.\d+)?) %')


def check(readme, summary):
    """One line on the outcome; raises SystemExit with one line when it fails."""
    found = FLOOR.search(' '.join(Path(readme).read_text().split()))
    if found is None:
        raise SystemExit(f'CI: {readme} states no quick-start floor ("{FLOOR.pattern}")')
    floor = float(found.group(1))
    dice = 100 * json.loads(Path(summary).read_text())['metrics']['dice']['mean']
    if not dice >= floor:
        raise SystemExit(f'CI: the quick start scored a mean Dice of {dice:.2f} %, below the README\'s {floor:g} % '
                         f'({summary})')
    return f'CI: the quick start scored a mean Dice of {dice:.2f} % (the README\'s floor: {floor:g} %)'


if __name__ == '__main__':
    if len(sys.argv) != 3:
        raise SystemExit('usage: python .ci/check_quickstart.py README.md TEST_SUMMARY_JSON')
    print(check(*sys.argv[1:]))
