"""Data pipeline: h5 datasets, numpy-dict transforms seeded per sample, batch samplers, and phantoms.

The phantom generator and the import recipes are modules run with `python -m dataloaders.synthetic`,
`python -m dataloaders.preprocess_la`, `python -m dataloaders.preprocess_pancreas` and
`python -m dataloaders.import_volumes` (their steps: dataloaders.volumes); importing them here would make
that run warn.
"""
from .datasets import DatasetError, H5Dataset, LAHeart, read_case, read_list, validate_case
from .samplers import IterationBatchSampler, LabeledBatchSampler, TwoStreamBatchSampler
from .transforms import (NORMALIZE_MODES, CenterCrop, Compose, NormalizeIntensity, RandomCrop, RandomNoise,
                         RandomRotFlip, ToTensor, normalize_intensity)
