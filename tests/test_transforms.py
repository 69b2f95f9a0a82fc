"""Transforms: output shapes, padding, rng reproducibility, and image/label alignment."""
import numpy as np
import pytest
import torch

from dataloaders.transforms import CenterCrop, Compose, RandomCrop, RandomNoise, RandomRotFlip, ToTensor


def make_sample(shape=(20, 18, 12), seed=0):
    # label is a function of the image (image > 0.5), so any misalignment between them shows.
    image = np.random.default_rng(seed).random(shape).astype(np.float32)
    return {'image': image, 'label': (image > 0.5).astype(np.uint8), 'name': 'case'}


def assert_aligned(sample):
    assert np.array_equal(sample['label'], (sample['image'] > 0.5).astype(np.uint8))


@pytest.mark.parametrize('crop', [RandomCrop((16, 8, 12)), CenterCrop((16, 8, 12))])
def test_crop_shape_alignment_and_extra_keys(crop):
    sample = make_sample()
    for seed in range(10):
        out = crop(sample, np.random.default_rng(seed))
        assert out['image'].shape == out['label'].shape == (16, 8, 12)
        assert_aligned(out)
        assert out['name'] == 'case'


def test_center_crop_is_central_and_random_crop_moves():
    sample = make_sample()
    center = CenterCrop((16, 8, 12))(sample)
    assert np.array_equal(center['image'], sample['image'][2:18, 5:13, 0:12])
    corners = set()
    for seed in range(30):
        out = RandomCrop((16, 8, 12))(sample, np.random.default_rng(seed))
        # find the box it took: the crop must be a sub-block of the input
        found = [(x, y) for x in range(5) for y in range(11)
                 if np.array_equal(out['image'], sample['image'][x:x + 16, y:y + 8, :])]
        assert len(found) == 1
        corners.add(found[0])
    assert len(corners) > 10


@pytest.mark.parametrize('crop', [RandomCrop((24, 24, 16)), CenterCrop((24, 24, 16))])
def test_crop_pads_small_volumes_with_zeros(crop):
    sample = make_sample((10, 30, 16))
    for seed in range(5):
        out = crop(sample, np.random.default_rng(seed))
        assert out['image'].shape == out['label'].shape == (24, 24, 16)
        # x: 14 zero voxels in total, split 7/7 around the 10 real ones
        assert not out['image'][:7].any() and not out['image'][17:].any() and not out['label'][:7].any()
        assert out['image'][7:17].all()
        assert_aligned(out)


def test_random_transforms_reproducible_from_rng():
    sample = make_sample((24, 24, 16))
    t = Compose([RandomRotFlip(), RandomCrop((16, 16, 8)), RandomNoise(sigma=0.1), ToTensor()])
    a = t(sample, np.random.default_rng([1, 2, 3]))
    b = t(sample, np.random.default_rng([1, 2, 3]))
    c = t(sample, np.random.default_rng([1, 2, 4]))
    assert torch.equal(a['image'], b['image']) and torch.equal(a['label'], b['label'])
    assert not torch.equal(a['image'], c['image'])


def test_rot_flip_keeps_alignment_and_covers_all_variants():
    sample = make_sample((12, 12, 6))
    seen = set()
    for seed in range(80):
        out = RandomRotFlip()(sample, np.random.default_rng(seed))
        assert_aligned(out)
        assert out['image'].shape == (12, 12, 6) and out['image'].flags.c_contiguous
        # z is never touched: each z slice is a rotation/flip of the matching input slice
        assert np.allclose(np.sort(out['image'][:, :, 3], axis=None), np.sort(sample['image'][:, :, 3], axis=None))
        seen.add(out['image'].tobytes())
    # The lineage always flips after rotating, so only the 4 mirror images of the (X,Y) square occur.
    mirrors = {np.ascontiguousarray(np.flip(np.rot90(sample['image'], k), 0)).tobytes() for k in range(4)}
    assert seen == mirrors and len(seen) == 4


def test_random_noise_image_only_and_clipped():
    sample = make_sample((16, 16, 16))
    out = RandomNoise(mu=0.0, sigma=0.1)(sample, np.random.default_rng(0))
    noise = out['image'] - sample['image']
    assert out['image'].dtype == np.float32
    assert np.abs(noise).max() <= 0.2 + 1e-6 and np.abs(noise).max() > 0.15
    assert abs(noise.std() - 0.1) < 0.02
    assert out['label'] is sample['label']


def test_to_tensor_shapes_and_dtypes():
    out = ToTensor()(make_sample((4, 5, 6)))
    assert out['image'].shape == (1, 4, 5, 6) and out['image'].dtype == torch.float32
    assert out['label'].shape == (4, 5, 6) and out['label'].dtype == torch.int64
    assert out['name'] == 'case'


def test_bad_output_size():
    with pytest.raises(ValueError, match='output_size'):
        RandomCrop((16, 16))
    with pytest.raises(ValueError, match='output_size'):
        CenterCrop((16, 0, 16))
