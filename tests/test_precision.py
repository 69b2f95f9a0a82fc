"""utils.precision: the check that refuses train.py --amp where this CPU's bfloat16 convolution weight
gradients are wrong. Its decisions are tested with injected gradient functions (sound, off, NaN, changing from
call to call), so that no test depends on whether this CPU has the fault."""
import pytest
import torch

import train
from conftest import train_argv
from utils import precision
from utils.cli import UsageError, run_cli


def sound(x, weight, grad_out, transposed, stride, dtype):
    """The float32 weight gradient, rounded to bfloat16 under autocast: what a correct kernel gives. Computed
    without precision.weight_grad, which a test below replaces."""
    weight = weight.detach().requires_grad_(True)
    precision.convolve(x, weight, transposed, stride).backward(grad_out)
    return weight.grad if dtype is None else weight.grad.bfloat16().float()


def faulty_at(spatial, fault):
    """sound, except for the 3x3x3 convolution of a level of `spatial` voxels under autocast, where
    fault(gradient) is returned."""
    def grad_fn(x, weight, grad_out, transposed, stride, dtype):
        grad = sound(x, weight, grad_out, transposed, stride, dtype)
        return fault(grad) if dtype is not None and stride == 1 and tuple(x.shape[2:]) == spatial else grad
    return grad_fn


def check(grad_fn, patch=(16, 16, 16), n_filters=2, channels_last=True):
    precision.check_cpu_amp(torch.bfloat16, torch.device('cpu'), patch, n_filters, channels_last, grad_fn)


def test_layers_are_every_level_of_the_patch_with_its_channels():
    layers = precision.layer_shapes((48, 48, 32), 2)
    convs = [(x_shape, w_shape) for _, transposed, x_shape, w_shape, stride in layers if stride == 1]
    assert [x[2:] for x, _ in convs] == [(48, 48, 32), (24, 24, 16), (12, 12, 8), (6, 6, 4), (3, 3, 2)]
    assert [w[:2] for _, w in convs] == [(2, 2), (4, 4), (8, 8), (16, 16), (32, 32)]
    ups = [x_shape[2:] for _, transposed, x_shape, _, _ in layers if transposed]
    assert ups == [(24, 24, 16), (12, 12, 8), (6, 6, 4), (3, 3, 2)]  # each level's input to the up-sampling
    assert len(layers) == 5 + 4 + 4
    # a wide level keeps its spatial shape (which decides the fault) and gives up channels instead
    name, _, x_shape, w_shape, _ = precision.layer_shapes((112, 112, 80), 16)[0]
    assert x_shape[2:] == (112, 112, 80) and w_shape[:2] == (2, 2) and name.startswith('the 112x112x80 level')


def test_a_sound_kernel_passes_at_every_layer():
    seen = []

    def recording(x, weight, grad_out, transposed, stride, dtype):
        seen.append((tuple(x.shape[2:]), transposed, dtype))
        return sound(x, weight, grad_out, transposed, stride, dtype)
    check(recording)
    # every layer: twice in bfloat16, once in float32
    assert len(seen) == 3 * len(precision.layer_shapes((16, 16, 16), 2))
    assert ((2, 2, 2), False, torch.bfloat16) in seen and ((1, 1, 1), True, None) in seen


@pytest.mark.parametrize('fault, says', [
    (lambda g: g * 1e20, 'relative error 1.0e+20 against float32'),
    (lambda g: g.index_fill(0, torch.tensor([0]), float('nan')), 'non-finite'),
    (lambda g: g + 1e-3 * torch.randn(g.shape), 'not repeatable'),  # a new draw on each of the two calls
    (lambda g: g * 1.02, 'relative error 2.0e-02 against float32'),  # just above GRAD_TOLERANCE
])
def test_a_wrong_gradient_at_the_2x2x2_level_refuses_amp_in_one_line(fault, says):
    with pytest.raises(UsageError) as info:
        check(faulty_at((2, 2, 2), fault))
    text = str(info.value)
    assert text.startswith('--amp: ') and '\n' not in text
    assert 'the 2x2x2 level (1/8 of the patch) of --patch_size 16,16,16' in text and f'({says};' in text
    assert 'train without --amp' in text


def test_an_error_within_the_tolerance_passes():
    check(faulty_at((2, 2, 2), lambda g: g * (1 + precision.GRAD_TOLERANCE / 2)))


def test_nothing_is_checked_without_amp_or_on_cuda():
    def never(*args):
        raise AssertionError('checked')
    precision.check_cpu_amp(None, torch.device('cpu'), (16, 16, 16), 2, True, never)
    precision.check_cpu_amp(torch.float16, torch.device('cuda', 0), (16, 16, 16), 2, True, never)


def test_train_refuses_amp_before_any_work_and_trains_where_the_check_passes(phantoms, tmp_path, monkeypatch,
                                                                             one_thread):
    """train.py calls the check with its own patch: a kernel wrong at the 2x2x2 level of 16^3 patches stops it
    with one line and no run folder; with a sound kernel (whatever this CPU's is) it trains in bfloat16."""
    argv = train_argv(phantoms, tmp_path / 'refused', '--amp', max_iterations=2)
    monkeypatch.setattr(precision, 'weight_grad', faulty_at((2, 2, 2), lambda g: g * float('nan')))
    with pytest.raises(SystemExit) as stop:
        run_cli(train.main, argv)
    assert str(stop.value.code).startswith('error: --amp: ') and '2x2x2' in stop.value.code
    assert not (tmp_path / 'refused').exists()

    monkeypatch.setattr(precision, 'weight_grad', sound)
    train.main(train_argv(phantoms, tmp_path / 'run', '--amp', max_iterations=2))
    final = torch.load(tmp_path / 'run' / 'final.pth', weights_only=True)
    assert final['iteration'] == 2 and final['config']['amp'] is True

