"""The NIH Pancreas-CT case lists the lineage ships, as facts (case numbers NNNN of PANCREAS_NNNN).

MC-Net / MC-Net+ (ycwu1997/MC-Net, data/Pancreas): 62 train / 20 test of all 82 cases; the first 6 or 12
ids of train.list are the labeled ones. test.list is MC-Net's own file; MC-Net's train.list is not in its
repository as stored, so the train order is that of the MC-Net-derived repositories whose test.list is
MC-Net's to the line (cys1102/FBA-Net, Oubit1/DMSC): the 62 other cases.
CoraNet, copied by BCP (DeepMed-Lab-ECNU/BCP, data/Pancreas and code/NIH_Pancreas/data_lists): 12 labeled,
50 unlabeled, 18 test of 80 cases, in id order, without the duplicate scans 0025 and 0070.
"""

MCNET_TRAIN = tuple(f'{n:04d}' for n in (
    57, 18, 62, 31, 20, 17, 32, 79, 61, 64, 70, 19, 48, 76, 41, 52, 49, 71, 72, 34, 10, 15, 77, 80, 27, 47, 22,
    14, 68, 58, 7, 11, 24, 42, 82, 35, 12, 55, 75, 78, 16, 13, 53, 23, 56, 33, 38, 30, 81, 29, 36, 44, 2, 45,
    26, 65, 66, 43, 28, 63, 69, 3))
MCNET_TEST = tuple(f'{n:04d}' for n in (
    50, 59, 37, 60, 40, 74, 4, 46, 8, 54, 5, 73, 1, 39, 6, 67, 25, 51, 21, 9))
# TCIA's Pancreas-CT holds two scans twice; CoraNet and BCP drop these copies (BCP#22).
DUPLICATES = ('0025', '0070')
CORANET_LABELED = tuple(f'{n:04d}' for n in range(1, 13))
CORANET_UNLABELED = tuple(f'{n:04d}' for n in range(13, 64) if f'{n:04d}' not in DUPLICATES)
CORANET_TEST = tuple(f'{n:04d}' for n in range(64, 83) if f'{n:04d}' not in DUPLICATES)

# name -> (train list: labeled first, test list)
LIST_SETS = {
    'mcnet': (MCNET_TRAIN, MCNET_TEST),
    'coranet': (CORANET_LABELED + CORANET_UNLABELED, CORANET_TEST),
}
