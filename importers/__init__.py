"""Importers: raw scans (NIfTI, NRRD, a DICOM series) -> the h5 cases dataloaders/ reads, and the dataset checker.

Modules run with `python -m importers.import_volumes`, `python -m importers.preprocess_la`,
`python -m importers.preprocess_pancreas` and `python -m importers.check`; their steps are importers.volumes
(importing the scripts here would make those runs warn). importers/ may import dataloaders/ and utils/;
neither imports importers/ back, except utils/volume_io.py's use of importers.volumes and dataloaders/pictures.py's
of its table of directions (importers.volumes imports no utils and no dataloaders).
"""
