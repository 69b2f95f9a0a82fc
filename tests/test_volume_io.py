"""utils.volume_io: what segment.py's --input reads and what segment.py / test.py --save_pred write; every unusable file
is a UsageError whose one line names it."""
import h5py
import numpy as np
import pytest

from utils.cli import UsageError
from utils.trained import UniqueNames
from utils.volume_io import input_files, label_map_suffix, read_volume, volume_suffix, write_label_map


def test_reads_h5_and_npy_and_drops_a_trailing_channel(tmp_path):
    image = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    with h5py.File(tmp_path / 'a.h5', 'w') as f:
        f['image'] = image
    np.save(tmp_path / 'b.npy', image[..., None])
    for name in ('a.h5', 'b.npy'):
        read, affine = read_volume(tmp_path / name)
        assert read.dtype == np.float32 and affine is None
        np.testing.assert_array_equal(read, image)


@pytest.mark.parametrize('name, make, words', [
    ('no_image.h5', lambda p: h5py.File(p, 'w').create_dataset('label', data=np.zeros((2, 2, 2))),
     ['no "image" dataset', 'label']),
    ('broken.h5', lambda p: p.write_bytes(b'not hdf5' * 10), ['cannot read']),
    ('flat.npy', lambda p: np.save(p, np.zeros((4, 4))), ['3-D', '(4, 4)']),
    ('nan.npy', lambda p: np.save(p, np.full((2, 2, 2), np.nan)), ['NaN']),
    ('text.npy', lambda p: np.save(p, np.array([['a']])), ['3-D']),
])
def test_unusable_volumes_are_one_line_naming_the_file(tmp_path, name, make, words):
    path = tmp_path / name
    made = make(path)
    if hasattr(made, 'file'):  # an h5py dataset: close its file
        made.file.close()
    with pytest.raises(UsageError) as e:
        read_volume(path)
    text = str(e.value)
    assert str(path) in text and '\n' not in text
    for word in words:
        assert word in text


def test_input_files(tmp_path):
    (tmp_path / 'b.NII.GZ').write_bytes(b'')
    (tmp_path / 'a.npy').write_bytes(b'')
    (tmp_path / 'notes.txt').write_text('')
    assert [p.name for p in input_files(tmp_path)] == ['a.npy', 'b.NII.GZ']
    assert volume_suffix(tmp_path / 'b.NII.GZ') == '.nii.gz'
    with pytest.raises(UsageError, match='not a volume'):
        input_files(tmp_path / 'notes.txt')
    with pytest.raises(UsageError, match='no such file'):
        input_files(tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UsageError, match='holds no volume'):
        input_files(tmp_path / 'empty')


@pytest.mark.parametrize('source, nifti, h5, want', [
    ('.nii.gz', False, False, '.nii.gz'), ('.nii', False, False, '.nii.gz'), ('.h5', False, False, '.h5'),
    ('.hdf5', False, False, '.h5'), ('.npy', False, False, '.npy'), ('.npy', True, False, '.nii.gz'),
    ('.nii.gz', False, True, '.h5'),
])
def test_a_label_map_keeps_its_volume_format_unless_asked(source, nifti, h5, want):
    assert label_map_suffix(source, nifti, h5) == want


def test_write_label_map_and_unique_names(tmp_path):
    pred = np.random.default_rng(0).integers(0, 3, (3, 4, 5)).astype(np.uint8)
    write_label_map(pred, tmp_path / 'x.npy')
    write_label_map(pred, tmp_path / 'x.h5', source='scan.h5')
    np.testing.assert_array_equal(np.load(tmp_path / 'x.npy'), pred)
    with h5py.File(tmp_path / 'x.h5', 'r') as f:
        np.testing.assert_array_equal(f['label'][()], pred)
        assert f.attrs['source'] == 'scan.h5'
    names = UniqueNames()
    assert [names('a', '.h5'), names('a', '.h5'), names('a', '.npy'), names('a', '.h5')] == ['a', 'a_2', 'a', 'a_3']
