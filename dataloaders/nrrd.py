"""A tiny NRRD reader/writer, enough for the 2018 LA challenge's lgemri.nrrd / laendo.nrrd.

Implemented with numpy and the standard library's gzip only, so preprocessing the raw
challenge data needs no extra dependency (no pynrrd, no SimpleITK).

Supported: attached headers NRRD0001..NRRD0005, encodings raw and gzip (alias gz),
every integer type and float/double with their spec aliases, endian little/big,
'line skip' / 'byte skip'. Anything else (detached 'data file', ascii/hex/bzip2
encodings, block type, ...) raises a ValueError naming the file.

Axis order: NRRD 'sizes' list the fastest axis first. read_nrrd returns an array with
array.shape == tuple(sizes), i.e. the data read in Fortran order -- what pynrrd's default
(index_order='F') returns and what the UA-MT lineage's preprocessing indexed as (x, y, z).
"""
import gzip as _gzip
from pathlib import Path

import numpy as np

# (numpy dtype without byte order, canonical NRRD name, the spec's aliases). Tuples: a constant.
_TYPES = (
    ('i1', 'int8', ('signed char', 'int8_t')),
    ('u1', 'uint8', ('uchar', 'unsigned char', 'uint8_t')),
    ('i2', 'int16', ('short', 'short int', 'signed short', 'signed short int', 'int16_t')),
    ('u2', 'uint16', ('ushort', 'unsigned short', 'unsigned short int', 'uint16_t')),
    ('i4', 'int32', ('int', 'signed int', 'int32_t')),
    ('u4', 'uint32', ('uint', 'unsigned int', 'uint32_t')),
    ('i8', 'int64', ('longlong', 'long long', 'long long int', 'signed long long',
                     'signed long long int', 'int64_t')),
    ('u8', 'uint64', ('ulonglong', 'unsigned long long', 'unsigned long long int', 'uint64_t')),
    ('f4', 'float', ()),
    ('f8', 'double', ()),
)


def _dtype_of(type_name):
    """NRRD type name or alias -> numpy dtype code ('i2', ...), None when unknown."""
    for code, name, aliases in _TYPES:
        if type_name == name or type_name in aliases:
            return code
    return None


def _name_of(code):
    """numpy dtype code -> canonical NRRD type name, None when NRRD has no such type."""
    for known, name, _ in _TYPES:
        if code == known:
            return name
    return None


def _parse_vector(text):
    """'(1.0,0,0)' -> array([1., 0., 0.]); 'none' -> None."""
    text = text.strip()
    if text == 'none':
        return None
    if not (text.startswith('(') and text.endswith(')')):
        raise ValueError(f"bad vector {text!r}")
    return np.array([float(v) for v in text[1:-1].split(',')])


def _parse_field(key, value):
    """Turn the fields read_nrrd relies on into numbers; keep the rest as strings."""
    if key in ('dimension', 'space dimension', 'line skip', 'byte skip'):
        return int(value)
    if key == 'sizes':
        return tuple(int(v) for v in value.split())
    if key in ('spacings', 'thicknesses', 'axis mins', 'axis maxs'):
        return np.array([float(v) for v in value.split()])  # 'nan' parses as NaN
    if key == 'space origin':
        return _parse_vector(value)
    if key == 'space directions':
        # one vector per axis, 'none' for non-spatial axes (a NaN row, like pynrrd)
        vectors = [_parse_vector(v) for v in value.split()]
        width = max((len(v) for v in vectors if v is not None), default=0)
        return np.array([np.full(width, np.nan) if v is None else v for v in vectors])
    return value


def _read_header(fh, path):
    """Read the header lines up to the blank line. Returns (fields dict, key/value dict)."""
    magic = fh.readline().decode('ascii', 'replace').strip()
    if not (magic.startswith('NRRD000') and magic[-1] in '12345' and len(magic) == 8):
        raise ValueError(f"{path}: not an NRRD file (first line {magic[:20]!r})")
    fields, keyvalues = {}, {}
    while True:
        raw = fh.readline()
        if not raw:
            raise ValueError(f"{path}: header ends without the blank line that starts the data")
        line = raw.decode('latin-1').rstrip('\r\n')
        if line == '':
            break
        if line.startswith('#'):
            continue
        if ':=' in line:
            key, value = line.split(':=', 1)
            keyvalues[key] = value
            continue
        if ': ' not in line:
            raise ValueError(f"{path}: cannot parse header line {line!r}")
        key, value = line.split(': ', 1)
        try:
            fields[key.strip()] = _parse_field(key.strip(), value.strip())
        except ValueError as err:
            raise ValueError(f"{path}: bad header field {key.strip()!r}: {err}") from None
    return fields, keyvalues


def read_nrrd(path):
    """Read an NRRD file with an attached header.

    Returns (array, header): array.shape == header['sizes'] (fastest axis first), native
    byte order, dtype from 'type'. header holds the parsed fields ('sizes' a tuple of ints,
    'space directions' a (dimension, space dimension) float array with NaN rows for
    'none', 'space origin' a float array, 'dimension' an int, others strings) and the
    'key:=value' pairs under header['keyvaluepairs'].
    """
    path = Path(path)
    with open(path, 'rb') as fh:
        header, keyvalues = _read_header(fh, path)
        payload = fh.read()

    for required in ('type', 'dimension', 'sizes', 'encoding'):
        if required not in header:
            raise ValueError(f"{path}: header lacks the required field {required!r}")
    if 'data file' in header or 'datafile' in header:
        raise ValueError(f"{path}: detached data files are not supported (field 'data file')")
    type_name = header['type']
    code = _dtype_of(type_name)
    if code is None:
        raise ValueError(f"{path}: unsupported type {type_name!r}")
    sizes = header['sizes']
    if len(sizes) != header['dimension'] or any(s < 1 for s in sizes):
        raise ValueError(f"{path}: sizes {sizes} do not match dimension {header['dimension']}")

    dtype = np.dtype(code)
    if dtype.itemsize > 1:
        endian = header.get('endian')
        if endian not in ('little', 'big'):
            raise ValueError(f"{path}: multi-byte type {type_name!r} needs 'endian: little' "
                             f"or 'endian: big' (got {endian!r})")
        dtype = dtype.newbyteorder('<' if endian == 'little' else '>')

    # 'line skip' counts lines after the header, before any decompression.
    for _ in range(header.get('line skip', 0)):
        cut = payload.find(b'\n')
        if cut < 0:
            raise ValueError(f"{path}: 'line skip' runs past the end of the file")
        payload = payload[cut + 1:]

    encoding = header['encoding']
    if encoding in ('gzip', 'gz'):
        try:
            payload = _gzip.decompress(payload)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from None
    elif encoding != 'raw':
        raise ValueError(f"{path}: unsupported encoding {encoding!r} (raw and gzip only)")

    nbytes = int(np.prod(sizes)) * dtype.itemsize
    skip = header.get('byte skip', 0)
    if skip == -1:  # the spec's "data are the last bytes of the file"
        skip = len(payload) - nbytes
    if skip < 0 or len(payload) - skip < nbytes:
        raise ValueError(f"{path}: data too short: {len(payload) - max(skip, 0)} bytes, "
                         f"sizes {sizes} of {type_name} need {nbytes}")
    flat = np.frombuffer(payload, dtype=dtype, count=int(np.prod(sizes)), offset=skip)
    array = flat.reshape(sizes, order='F').astype(dtype.newbyteorder('='))
    header['keyvaluepairs'] = keyvalues
    return array, header


def write_nrrd(path, array, gzip=True, endian='little', spacing=None):
    """Write array as an NRRD0004 file with an attached header (for tests and phantoms).

    sizes = array.shape, data written in Fortran order so read_nrrd(path)[0] equals array.
    spacing: optional per-axis voxel size, written as diagonal 'space directions'.
    """
    array = np.asarray(array)
    type_name = _name_of(array.dtype.str[1:])
    if type_name is None:
        raise ValueError(f"{path}: cannot write dtype {array.dtype} as NRRD")
    if endian not in ('little', 'big'):
        raise ValueError(f"{path}: endian must be 'little' or 'big', got {endian!r}")
    lines = ['NRRD0004', f'type: {type_name}', f'dimension: {array.ndim}',
             'sizes: ' + ' '.join(str(s) for s in array.shape)]
    if spacing is not None:
        if len(spacing) != array.ndim:
            raise ValueError(f"{path}: spacing needs {array.ndim} values, got {len(spacing)}")
        vectors = []
        for axis, step in enumerate(spacing):
            vector = ['0'] * array.ndim
            vector[axis] = repr(float(step))
            vectors.append('(' + ','.join(vector) + ')')
        lines.append('space dimension: %d' % array.ndim)
        lines.append('space directions: ' + ' '.join(vectors))
    if array.dtype.itemsize > 1:
        lines.append(f'endian: {endian}')
    lines.append('encoding: ' + ('gzip' if gzip else 'raw'))
    order = '<' if endian == 'little' else '>'
    data = array.astype(array.dtype.newbyteorder(order)).tobytes(order='F')
    if gzip:
        data = _gzip.compress(data, compresslevel=1)
    Path(path).write_bytes(('\n'.join(lines) + '\n\n').encode('ascii') + data)
