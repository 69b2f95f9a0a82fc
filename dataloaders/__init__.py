"""Data pipeline, one idea per module: datasets.py (h5 volumes listed in a text file), transforms.py (numpy-dict
transforms seeded per sample), samplers.py (the two-stream batch sampler), and the phantoms of the quick start
(`python -m dataloaders.synthetic`). Nothing is imported here, so that importing one module loads that one alone.
The importers of raw scans (NIfTI, NRRD, DICOM -> h5) are the package importers/.
"""
