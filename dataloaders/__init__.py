"""Data pipeline: h5 datasets, numpy-dict transforms seeded per sample, batch samplers, and phantoms."""
from .datasets import DatasetError, H5Dataset, LAHeart, read_case, read_list, validate_case
from .samplers import IterationBatchSampler, LabeledBatchSampler, TwoStreamBatchSampler
from .synthetic import make_synthetic_dataset
from .transforms import CenterCrop, Compose, RandomCrop, RandomNoise, RandomRotFlip, ToTensor
