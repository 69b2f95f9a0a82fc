"""The volume import pipeline: one small step per module, each a plain function on numpy arrays.

    checks    checks.py           finite voxels, header geometry, label on its image, label values, flags, sizes
    read      read.py, dicom.py   a file or DICOM series -> (array indexed (x, y, z), spacing in mm)
    resample  resample.py         -> a target spacing (image linear or cubic, label nearest)
    intensity intensity.py        CT window -> [0, 1]; z-score (optionally over non-zero voxels)
    crop      crop.py             box around the label or the body, or none; pad up to a minimum size
    write     write.py            h5 ('image' float32, 'label' uint8, gzip) and list files, nothing half-written
    recipe    recipe.py           what an import did, as data: OUT/dataset.json
    apply     apply.py            a recipe on a new scan, and its geometric steps undone on the class scores

Recipes are the scripts that chain the steps: importers.preprocess_la, importers.preprocess_pancreas
and importers.import_volumes; each writes its recipe.py record beside the cases. nibabel, pynrrd and
pydicom are optional: each is imported by the one function that reads its format, and a missing one is
named in one line (VolumeError) with its pip line.
"""
from .apply import label_values, modality_problem, network_axes, scan_problem, to_network_grid, to_scan_grid, to_stored
from .checks import (MAX_VOXELS, MIN_AXIS, affine_problem, align_label, check_affine, constant_problem, finite_problem,
                     label_value_problem, number_problems, size_problem)
from .crop import AXES, body_mask, bounding_box, crop_box, label_box, pad_to
from .dicom import read_ct_scan, read_ct_series
from .errors import ProblemList, VolumeError
from .intensity import apply_steps, ct_window, zscore
from .pairs import pair_files, volume_files
from .read import read_scan, read_with_spacing, scan_suffix
from .recipe import (RECIPE_FILE, class_values, legacy_warning, make_recipe, read_recipe, recipe_problems,
                     write_recipe)
from .resample import resample, resample_pair
from .write import ReplacingDir, StagingDir, check_out_dir, write_case_h5, write_list
