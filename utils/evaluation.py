"""Evaluation over a list of cases: segment each with utils/inference.py's sliding window, post-process it if asked,
score it with utils/metrics.py. test.py and the benchmarks call test_all_case; train.py's validation calls
test_single_case itself."""
import time

import numpy as np
from tqdm import tqdm

from .inference import test_single_case
from .metrics import case_metrics, keep_largest_components


def test_all_case(net, cases, num_classes, patch_size, stride_xy, stride_z, device=None, lcc=False, spacing=None,
                  lineage_empty=False, save_fn=None, batch_size=1, weight=None, progress=True, channels_last=False,
                  amp=None):
    """Segment and score every case of `cases`, an iterable of (case_id, image (X,Y,Z), label (X,Y,Z)).

    lcc: keep only the largest connected component per class before scoring. save_fn(case_id, pred, image, label,
    score) is called with the scored prediction. channels_last, amp: as in test_single_case. Returns one dict per
    case: 'case', 'dice', 'jaccard', 'hd95', 'asd', 'empty', 'gt_empty', 'seconds' (inference wall time incl.
    transfers), 'shape', and per-class columns when num_classes > 2 (see utils.metrics.case_metrics);
    utils.metrics.summarize turns them into mean ± std.
    """
    rows = []
    for case_id, image, label in tqdm(cases, desc='test', unit='case', disable=not progress):
        start = time.perf_counter()
        pred, score = test_single_case(net, image, stride_xy, stride_z, patch_size, num_classes, device=device,
                                       batch_size=batch_size, weight=weight, channels_last=channels_last, amp=amp)
        seconds = time.perf_counter() - start  # .cpu() in test_single_case synchronises, so this is device time too
        if lcc:
            pred = keep_largest_components(pred, num_classes)
        row = {'case': str(case_id)}
        row.update(case_metrics(pred, label, num_classes, spacing, lineage_empty))
        row['seconds'] = seconds
        row['shape'] = list(np.shape(image))
        if save_fn is not None:
            save_fn(case_id, pred, image, label, score)
        rows.append(row)
    return rows


# pytest collects functions named test_* that a test module imports; this is a library function, not a test
test_all_case.__test__ = False
