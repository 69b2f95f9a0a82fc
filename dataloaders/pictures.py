"""Pictures of a 3-D case: three orthogonal slices of the image, with label and prediction outlined.

    python -m importers.check --root_path data/LA --png pictures/     # the data before training
    python test.py --labelnum 8 --save_png                              # each test case after

Where the orientation of the arrays is known (the axis codes of the import recipe, e.g. 'LPS': the networks'
orientation, which every imported case and every scan segment.py reads is brought to), each panel is the
slice across the patient's axis it is named after and its edges carry the directions the patient lies
in (L/R, A/P, S/I): a scan looks the same however its file stored it. Without one, the panels are the
arrays' x, y and z slices.

The packages that draw are optional: optional_import loads one when a picture is asked for and turns
its absence into one line naming the package, so the data pipeline and training run without them.
"""
import importlib

import numpy as np

# The patient's directions in pairs of opposites: a picture's edges face both of a pair.
OPPOSITE = {'L': 'R', 'R': 'L', 'A': 'P', 'P': 'A', 'S': 'I', 'I': 'S'}

# Outline colours on a grey image: cyan and orange stay apart for the common colour-vision deficiencies.
TRUTH_COLOR = '#00d8ff'
PREDICTION_COLOR = '#ff8c00'
# (title, axis held fixed) of each panel, left to right.
VIEWS = (('axial', 2), ('coronal', 1), ('sagittal', 0))
AXIS_NAMES = 'xyz'
FIGURE_SIZE = (12.0, 4.4)  # inches; at DPI the PNG is 1200 x 440 pixels
DPI = 100


class MissingPackageError(ImportError):
    """An optional package a flag needs is not installed; the message is one line naming both."""
    user_error = True  # utils.cli.run_cli prints the message as one line, no traceback


def optional_import(module, flag, package):
    """Import `module`; when it (or what it needs) is missing, raise MissingPackageError naming the package."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(f'{flag} needs the package {package}: pip install {package}') from None


def mask_centre(mask):
    """Voxel index (x, y, z) of the centre of mass of mask != 0, rounded; None when the mask is empty."""
    mask = np.asarray(mask) != 0
    if not mask.any():
        return None
    centre = []
    for axis in range(3):
        profile = mask.sum(axis=tuple(a for a in range(3) if a != axis))
        centre.append(int(round(float((profile * np.arange(len(profile))).sum() / profile.sum()))))
    return tuple(centre)


def slice_centre(shape, *masks):
    """Centre of the first non-empty mask (label, then prediction), else the middle of the volume."""
    for mask in masks:
        if mask is not None:
            centre = mask_centre(mask)
            if centre is not None:
                return centre
    return tuple(n // 2 for n in shape)


def view(volume, axis, index):
    """The slice of `volume` (X, Y, Z) at `index` along `axis`, as rows x columns of a picture (row 0 at the top).

    Axial slices show x across and y down; coronal and sagittal ones show x or y across and z up.
    """
    plane = np.take(np.asarray(volume), index, axis=axis)
    return plane.T if axis == 2 else plane.T[::-1]


def panels(orientation=None):
    """(title, axis held fixed) of each panel, left to right: VIEWS, or with axis codes the axis running
    S/I (axial), A/P (coronal) and L/R (sagittal)."""
    if orientation is None:
        return VIEWS
    return tuple((name, next(a for a, c in enumerate(orientation) if c in pair))
                 for name, pair in (('axial', 'SI'), ('coronal', 'AP'), ('sagittal', 'LR')))


def edge_letters(orientation, axis):
    """(left, right, top, bottom) letters of the patient's directions on the edges of the panel holding
    `axis` fixed, as view() lays it out: the first other axis across, the second down (axis 2) or up."""
    across, down = [a for a in range(3) if a != axis]
    toward_down = orientation[down] if axis == 2 else OPPOSITE[orientation[down]]
    return OPPOSITE[orientation[across]], orientation[across], OPPOSITE[toward_down], toward_down


def mark_edges(ax, letters):
    """Write the four letters of edge_letters inside the panel's left, right, top and bottom edges."""
    places = (((0.01, 0.5), 'left', 'center'), ((0.99, 0.5), 'right', 'center'), ((0.5, 0.99), 'center', 'top'),
              ((0.5, 0.01), 'center', 'bottom'))
    for letter, (xy, horizontal, vertical) in zip(letters, places):
        ax.text(*xy, letter, transform=ax.transAxes, ha=horizontal, va=vertical, color='yellow', fontsize=12,
                fontweight='bold', bbox={'facecolor': 'black', 'alpha': 0.6, 'pad': 1.5, 'edgecolor': 'none'})


def grey_window(image):
    """(low, high) grey levels: the 1st and 99th percentiles, so a few bright voxels do not wash out the rest."""
    low, high = np.percentile(image, [1, 99])
    return float(low), float(max(high, low + 1e-6))


def draw_outlines(ax, mask, color):
    """Outline each foreground class of a 2-D label slice (classes side by side share a border line)."""
    for c in np.unique(mask):
        if c != 0:
            ax.contour((mask == c).astype(np.float32), levels=[0.5], colors=[color], linewidths=1.3)


def save_case_png(path, image, label=None, pred=None, title='', spacing=None, flag='--png', orientation=None):
    """Write one PNG of three orthogonal slices through the label's centre (the prediction's when the label
    is empty or absent, the volume's middle when both are), image in grey, label and prediction outlined.

    image, label, pred: (X, Y, Z) arrays, label and pred optional; spacing: (x, y, z) voxel size for the
    aspect ratio (isotropic when None); flag names the option in the error when matplotlib is missing;
    orientation: the arrays' axis codes (e.g. 'LPS'), which names the panels by anatomy and marks their
    edges with the patient's directions (module docstring); None: x, y, z.
    """
    figure = optional_import('matplotlib.figure', flag, 'matplotlib')
    lines = optional_import('matplotlib.lines', flag, 'matplotlib')
    image = np.asarray(image, dtype=np.float32)
    centre = slice_centre(image.shape, label, pred)
    spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(spacing)
    low, high = grey_window(image)
    fig = figure.Figure(figsize=FIGURE_SIZE, dpi=DPI, layout='constrained')
    axes = fig.subplots(1, 3)
    for ax, (name, axis) in zip(axes, panels(orientation)):
        across, down = [a for a in range(3) if a != axis]
        ax.imshow(view(image, axis, centre[axis]), cmap='gray', vmin=low, vmax=high, interpolation='nearest',
                  aspect=spacing[down] / spacing[across])
        for mask, color in ((label, TRUTH_COLOR), (pred, PREDICTION_COLOR)):
            if mask is not None:
                draw_outlines(ax, view(mask, axis, centre[axis]), color)
        if orientation is None:
            ax.set_title(f'{name}, {AXIS_NAMES[axis]} = {centre[axis]}', fontsize=11)
            ax.set_xlabel(AXIS_NAMES[across])
            ax.set_ylabel(AXIS_NAMES[down])
        else:
            ax.set_title(f'{name}, slice {centre[axis]} of {image.shape[axis]} ({orientation} arrays)', fontsize=11)
            mark_edges(ax, edge_letters(orientation, axis))
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [lines.Line2D([], [], color=color, linewidth=2, label=name if np.any(mask) else f'{name} (empty)')
               for mask, color, name in ((label, TRUTH_COLOR, 'label'), (pred, PREDICTION_COLOR, 'prediction'))
               if mask is not None]
    if handles:
        fig.legend(handles=handles, loc='outside lower center', ncols=len(handles), frameon=False, fontsize=11)
    fig.suptitle(title, fontsize=13)
    fig.savefig(path, dpi=DPI)
