import math

import pytest

from utils.ramps import sigmoid_rampup


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(250, 100) == 1.0      # beyond the ramp: stays at full weight
    assert sigmoid_rampup(-10, 100) == pytest.approx(math.exp(-5))  # clipped at 0
    assert sigmoid_rampup(75.0, 100) == pytest.approx(math.exp(-5 * 0.0625))
    assert isinstance(sigmoid_rampup(3, 10), float)


def test_sigmoid_rampup_is_monotone():
    values = [sigmoid_rampup(t, 40) for t in range(0, 60)]
    assert all(a < b for a, b in zip(values[:40], values[1:41]))
    assert all(v == 1.0 for v in values[40:])


def test_sigmoid_rampup_zero_length_and_negative():
    assert sigmoid_rampup(0, 0) == 1.0
    assert sigmoid_rampup(123, 0) == 1.0
    with pytest.raises(ValueError):
        sigmoid_rampup(1, -5)
