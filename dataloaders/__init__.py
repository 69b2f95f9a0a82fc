"""Data pipeline: h5 datasets, numpy-dict transforms seeded per sample, batch samplers, and phantoms.

The phantom generator is a module run with `python -m dataloaders.synthetic`; importing it here would
make that run warn. The importers of raw scans (NIfTI, NRRD, DICOM -> h5) are the package importers/.
"""
from .datasets import DatasetError, H5Dataset, LAHeart, read_case, read_list, validate_case
from .samplers import IterationBatchSampler, LabeledBatchSampler, TwoStreamBatchSampler
from .transforms import (NORMALIZE_MODES, CenterCrop, Compose, NormalizeIntensity, RandomCrop, RandomNoise,
                         RandomRotFlip, ToTensor, normalize_intensity)
