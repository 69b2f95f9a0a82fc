"""The core stays what the project promises (benchmarks/core_size.py measures it; docs/reading.md keeps the
figures): train.py and test.py load no importer, benchmark or scan reader, stay small, and the method is at least
a third of what `import train` loads."""
from benchmarks import core_size


def test_the_core_is_small_and_mostly_the_method():
    m = core_size.measure()
    assert m['doors_loaded'] == [] and m['scan_readers_loaded'] == []
    assert m['train_modules'] <= 25 and m['train_lines'] <= 2900, (m['train_modules'], m['train_lines'])
    assert m['test_modules'] <= 15 and m['test_lines'] <= 1800, (m['test_modules'], m['test_lines'])
    assert 3 * m['method_lines'] >= m['train_lines'], (m['method_lines'], m['train_lines'])
    assert m['machinery_lines'] <= 950, m['machinery']
    assert m['loop_lines'] <= 20
    # one iteration's files are what train.py loads, and no more than 8
    assert set(core_size.ITERATION_FILES) <= set(m['train_files']) and len(core_size.ITERATION_FILES) <= 8
    assert m['readme_lines'] <= 250


def test_step_functions_are_counted_from_train_py():
    assert core_size.function_lines('train.py', ('dual_step',)) > 50  # the method's iteration itself
    assert core_size.function_lines('train.py', ('no_such_function',)) == 0
