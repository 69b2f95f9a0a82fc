"""Every loss term under CPU autocast, float16 and bfloat16, at full LA size; a whole dual step under autocast.

Full size matters: a float16 sum overflows at 65504, so the prototype sum of the contrastive term over about a
million unit features of one class is inf (then NaN) at 2 x 16 x 112 x 112 x 80, not on small test tensors.
Each term gets its inputs as a network under autocast gives them: logits and features in the autocast dtype
(CPU autocast runs convolutions there), probabilities the softmax of those half logits (autocast leaves them in
the half dtype); float32 inputs would not do, since CPU autocast lowers only convolutions and matrix products
and most terms would compare float32 with float32. Each must be finite, float32 and close to the float32 value.
"""
import pytest
import torch

from losses import (confident_disagreement, cosine_consistency_loss, cps_loss, cross_pseudo_label,
                    dice_loss, entropy, mutual_correction_loss, percentile, prototype_contrastive_loss,
                    softmax_mse_loss, supervised_loss, urps_loss)
from networks import ResNet34VNet, VNet

import train

SHAPE = (2, 2, 112, 112, 80)  # two unlabeled LA patches, binary
FEATURES = 16
HALF = (torch.float16, torch.bfloat16)
# (rtol, atol) against the float32 value when every input is rounded to the autocast dtype first; measured
# worst cases: 3.5e-4 (float16, the entropy percentile) and 6.6e-4 (bfloat16, the entropy percentile)
TOLERANCE = {torch.float16: (1e-3, 1e-6), torch.bfloat16: (3e-3, 1e-6)}


@pytest.fixture(scope='module')
def full():
    """float32 inputs at full size, with the masks train.py derives from them."""
    g = torch.Generator().manual_seed(0)
    label = torch.rand(SHAPE[:1] + SHAPE[2:], generator=g) < 0.2
    # two imperfect networks that mostly agree with the label and with each other
    base = 3 * (2 * label.float() - 1) + 2 * torch.randn(SHAPE[:1] + SHAPE[2:], generator=g)
    logits_a = torch.stack([-base / 2, base / 2], dim=1)
    logits_b = logits_a + torch.randn(SHAPE, generator=g)
    prob_a, prob_b = logits_a.softmax(dim=1), logits_b.softmax(dim=1)
    pseudo, reliable = cross_pseudo_label(prob_a, prob_b)
    # post-ReLU features, each class around its own direction: sums of their unit vectors grow like the count
    direction = torch.rand(2, FEATURES, generator=g)
    features = (direction[label.long()].movedim(-1, 1) + 0.5 * torch.randn((SHAPE[0], FEATURES) + SHAPE[2:],
                                                                          generator=g)).relu_()
    return dict(logits_a=logits_a, logits_b=logits_b, prob_a=prob_a, prob_b=prob_b, label=label.long(),
                pseudo=pseudo, reliable=reliable, features=features, student_prob=prob_b)


@pytest.fixture(scope='module')
def rounded(full):
    """The same inputs as a network under autocast gives them, made once per dtype: logits and features in
    float16 / bfloat16, probabilities the softmax of the half logits under autocast (half too). The masks and
    the contrastive term's student_prob stay float32: they only pick voxels (argmax), and a tie broken the other
    way would sample other voxels, a difference of sampling, not of precision (pseudo-labels from half
    probabilities are tested below)."""
    made = {}
    for dtype in HALF:
        inputs = {**full, 'logits_a': full['logits_a'].to(dtype), 'logits_b': full['logits_b'].to(dtype),
                  'features': full['features'].to(dtype)}
        with torch.autocast('cpu', dtype=dtype):
            inputs.update(prob_a=inputs['logits_a'].softmax(dim=1), prob_b=inputs['logits_b'].softmax(dim=1))
        made[dtype] = inputs
    return made


def contrastive(t):
    # the sampled voxels depend on argmax p: the probabilities are float32, as train.py gives them
    return prototype_contrastive_loss(t['features'], t['student_prob'], t['pseudo'], t['reliable'],
                                      generator=torch.Generator().manual_seed(1))


TERMS = {
    'supervised': lambda t: supervised_loss(t['logits_a'], t['label'])[0],
    'dice': lambda t: dice_loss(t['prob_a'][:, 1], t['label']),
    'mutual_correction': lambda t: mutual_correction_loss(
        t['prob_a'], t['label'], confident_disagreement(t['prob_a'], t['prob_b'])),
    'cosine': lambda t: cosine_consistency_loss(t['prob_a'], t['prob_b']),
    'urps': lambda t: urps_loss(t['logits_b'], t['prob_a']),
    'cps': lambda t: cps_loss(t['logits_a'], t['pseudo'], t['reliable']),
    'entropy_percentile': lambda t: percentile(entropy(t['prob_a']), 80),
    'contrastive': contrastive,
    'mean_teacher': lambda t: softmax_mse_loss(t['logits_a'], t['logits_b']),
}


@pytest.fixture(scope='module')
def reference(full):
    return {name: fn(full).item() for name, fn in TERMS.items()}


@pytest.mark.parametrize('dtype', HALF, ids=str)
@pytest.mark.parametrize('name', TERMS)
def test_term_under_autocast_with_half_inputs_is_close_to_float32(rounded, reference, name, dtype):
    """Bugs caught: a term that computes or reduces in the half dtype (a float16 sum over a million voxels
    overflows to inf, a bfloat16 mean keeps 3 digits), or that returns a half scalar."""
    floats = [v for k, v in rounded[dtype].items() if v.is_floating_point() and k != 'student_prob']
    assert len(floats) == 5 and all(v.dtype == dtype for v in floats)  # no float32 value: not a vacuous comparison
    with torch.autocast('cpu', dtype=dtype):
        value = TERMS[name](rounded[dtype])
    assert value.dtype == torch.float32 and torch.isfinite(value), (name, value)
    rtol, atol = TOLERANCE[dtype]
    assert value.item() == pytest.approx(reference[name], rel=rtol, abs=atol)


@pytest.mark.parametrize('dtype', HALF, ids=str)
def test_pseudo_labels_from_half_probabilities_match_float32(full, rounded, dtype):
    with torch.autocast('cpu', dtype=dtype):
        pseudo, reliable = cross_pseudo_label(rounded[dtype]['prob_a'], rounded[dtype]['prob_b'])
    assert (pseudo == full['pseudo']).float().mean() > 0.999
    assert (reliable == full['reliable']).float().mean() > 0.99


# float16 convolutions are slow on the CPU: channels-last only with bfloat16, the pair --amp --channels_last runs
@pytest.mark.parametrize('dtype,channels_last', [(torch.float16, False), (torch.bfloat16, False),
                                                 (torch.bfloat16, True)], ids=['float16', 'bfloat16', 'bfloat16-cl'])
@pytest.mark.usefixtures('one_thread')
def test_dual_step_under_autocast_is_finite_and_trains_both_networks(dtype, channels_last):
    torch.manual_seed(1)  # a seed where both untrained networks predict both classes
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    kw = dict(n_channels=1, n_classes=2, n_filters=2)
    net_a, net_b = VNet(**kw).to(memory_format=fmt), ResNet34VNet(**kw).to(memory_format=fmt)
    # bfloat16 at 48x48x32: V-Net levels down to 3x3x2, clear of the 2x2x1 and 2x2x2 at which some CPUs'
    # bfloat16 weight gradients are wrong or NaN (utils/precision.py; train.py refuses --amp there)
    spatial = (48, 48, 32) if dtype == torch.bfloat16 else (16, 16, 16)
    image = torch.randn(4, 1, *spatial).contiguous(memory_format=fmt)
    label = (torch.rand(4, *spatial) > 0.6).long()
    cfg = dict(labeled_bs=2, conf_thresh=0.5, uncertain_percent=20, cps_filter='global', ramp_unsup=1,
               contrast_tau=0.1, contrast_samples=64, rampup=10,
               alpha_mc=0.5, lambda_reg=1.0, lambda_urps=1.0, lambda_cps=1.0, lambda_con=0.1)
    # optimisers at lr 0: the step's backward pass leaves its gradients, the weights stay
    opt_a, opt_b = (torch.optim.SGD(net.parameters(), lr=0.0) for net in (net_a, net_b))
    _, record, _ = train.dual_step(net_a, net_b, opt_a, opt_b, train.grad_scaler(None), image, label, 10,
                                   torch.Generator(), amp=dtype, **cfg)
    for name, value in record.items():
        assert torch.isfinite(value), name
    for term in ('mc_a', 'reg', 'urps', 'cps_a', 'con'):
        assert record[term] != 0, term  # every term is on and computed
    for net in (net_a, net_b):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


# ------------------------------------------------------------------------ on a GPU (benchmarks/gpu_check.py runs these)

@pytest.mark.parametrize('name', TERMS)
@pytest.mark.parametrize('dtype', HALF, ids=str)
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_term_under_autocast_is_close_to_float32(full, rounded, reference, name, dtype):
    """What --amp on a GPU gives the losses: network outputs in float16 under CUDA autocast."""
    inputs = {k: v.cuda() for k, v in rounded[dtype].items()}
    with torch.autocast('cuda', dtype=dtype):
        value = TERMS[name](inputs)
    assert value.dtype == torch.float32 and torch.isfinite(value), (name, value)
    rtol, atol = TOLERANCE[dtype]
    if name == 'contrastive':  # the CUDA generator draws other voxels than the CPU one: sampling noise
        rtol = 0.05
    assert value.item() == pytest.approx(reference[name], rel=rtol, abs=atol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_train_with_amp_and_channels_last_runs_finite(phantoms, tmp_path):
    from conftest import train_argv
    run = tmp_path / 'run'
    train.main(train_argv(phantoms, run, '--amp', '--channels_last', gpu=0, max_iterations=3, log_every=1))
    rows = (run / 'iterations.csv').read_text().splitlines()
    assert len(rows) == 4 and 'nan' not in ''.join(rows).lower() and 'inf' not in ''.join(rows).lower()
    assert torch.load(run / 'final.pth', weights_only=True)['iteration'] == 3
