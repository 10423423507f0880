"""A faithful binary copy of an item for the archiver's own state (spool, dead-letter store).

The spool and the dead-letter store must give back exactly what arrived: an ``np.float32`` stays a
float32, a big-endian array stays big-endian, a tuple key stays a tuple, a ``datetime`` a datetime.
JSON cannot carry that, so the copy is a pickle (protocol 5, arrays as out-of-band buffers written
as they are, without a copy of large frames).

A pickle can run any code when it is loaded, and an entry on disk may have been planted or edited by
someone else, so it is read back only through ``_RestrictedUnpickler``, which resolves an explicit
whitelist of globals (numpy arrays, dtypes, scalars and masked arrays; ``set``, ``complex``, ``datetime``,
``Decimal``, ``UUID``, paths, ...) and nothing else. ``encode`` reads every copy back the same way before
it is trusted: a value that needs any other global (an application's own class, an Enum) is refused
with ``UnfaithfulError``, and the caller decides what to do instead (decision 0013).
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import importlib
import io
import pathlib
import pickle
import uuid
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
import numpy as np

from ..errors import UnfaithfulError
from ..saferepr import safe_str, type_name

_PROTOCOL = 5


def _numpy_core(name: str) -> Any:
    """``numpy._core.<name>`` (numpy 2) or ``numpy.core.<name>`` (numpy 1): where arrays' pickles point."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{name}")


#: What heros' CBOR decoder hands over for CBOR it has no Python type for (an unknown tag, a simple
#: value, ``undefined``, a stray ``break``): it arrives over the network, so it is kept too.
_CBOR_CONSTANTS = {"undefined": cbor2.undefined, "break_marker": cbor2.break_marker}  # type: ignore[attr-defined]


def _cbor_tag(tag: int, value: Any) -> cbor2.CBORTag:
    return cbor2.CBORTag(tag, value)


def _cbor_simple_value(value: int) -> cbor2.CBORSimpleValue:
    return cbor2.CBORSimpleValue(value)


def _cbor_constant(name: str) -> Any:
    return _CBOR_CONSTANTS[name]


def _array(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """An array over the raw bytes of a faithful copy (no copy: a view of the buffer read from disk)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnfaithfulError(f"expected a dtype without Python objects for raw array bytes, got {safe_str(dtype)}")
    return np.frombuffer(buffer, dtype=np.uint8).view(dtype).reshape(shape, order=order)  # type: ignore[call-overload]


def _reduce_array(array: np.ndarray) -> Any:
    """An ndarray (not a subclass, no Python objects) as its dtype, shape, order and raw bytes out of band.

    numpy's own pickling loses the byte order of datetime64/timedelta64 arrays (a big-endian array comes
    back little-endian with its bytes unchanged, so other values), and cannot hand those over out of band.
    """
    if array.flags.c_contiguous:
        flat, order = array, "C"
    elif array.flags.f_contiguous:
        flat, order = array.T, "F"
    else:
        flat, order = np.ascontiguousarray(array), "C"
    try:
        raw = flat.reshape(-1).view(np.uint8)
    except ValueError:  # a dtype of itemsize 0: numpy's own pickling handles it
        return NotImplemented
    # the array itself, not raw.data: a buffer whose exporter is a memoryview can crash the garbage
    # collector of CPython 3.11 (memory_clear drops the view's managed buffer while another holds an export)
    return _array, (pickle.PickleBuffer(raw), array.dtype, array.shape, order)  # type: ignore[arg-type]


def _masked_array(data: np.ndarray, mask: Any, fill_value: Any, hard_mask: bool) -> np.ma.MaskedArray:
    """A masked array from its parts (each rebuilt by the whitelist: data and mask are arrays)."""
    if not isinstance(data, np.ndarray) or not (mask is np.ma.nomask or isinstance(mask, np.ndarray)):
        raise UnfaithfulError(f"expected arrays for a masked array's data and mask, got {type_name(data)}")
    return np.ma.MaskedArray(data, mask=mask, fill_value=fill_value, hard_mask=hard_mask, shrink=False)


def _reduce_masked_array(array: np.ma.MaskedArray) -> Any:
    """A masked array as its data and mask (numpy's own pickling of one loses datetime byte order too)."""
    mask = array.mask if array.mask is np.ma.nomask else np.asarray(array.mask)
    fill_value = array._fill_value  # type: ignore[attr-defined]  # None, or what was set: not the default
    return _masked_array, (np.asarray(array.data), mask, fill_value, bool(array.hardmask))


class _Pickler(pickle.Pickler):
    """Pickles plain arrays by their raw bytes, and cbor2's own types (which cannot be pickled as they are),
    through the functions above."""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is np.ndarray and not obj.dtype.hasobject:
            return _reduce_array(obj)
        if kind is np.ma.MaskedArray and not obj.dtype.hasobject:
            return _reduce_masked_array(obj)
        if kind is cbor2.CBORTag:
            return _cbor_tag, (obj.tag, obj.value)
        if kind is cbor2.CBORSimpleValue:
            return _cbor_simple_value, (obj.value,)
        for name, constant in _CBOR_CONSTANTS.items():
            if obj is constant:
                return _cbor_constant, (name,)
        return NotImplemented


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Every global a faithful copy may name: constructors that only build the value they are given."""
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")
    numpy_globals = {
        "_reconstruct": multiarray._reconstruct,
        "scalar": multiarray.scalar,
        "_frombuffer": numeric._frombuffer,
    }
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.ma", "MaskedArray"): np.ma.MaskedArray,
        ("numpy.ma.core", "MaskedArray"): np.ma.MaskedArray,
        ("numpy.ma.core", "MaskedConstant"): np.ma.core.MaskedConstant,
        ("numpy.ma.core", "_mareconstruct"): np.ma.core._mareconstruct,  # type: ignore[attr-defined]
        ("builtins", "complex"): complex,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "slice"): slice,
        ("builtins", "range"): range,
        ("builtins", "getattr"): _restricted_getattr,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("datetime", "datetime"): datetime.datetime,
        ("datetime", "date"): datetime.date,
        ("datetime", "time"): datetime.time,
        ("datetime", "timedelta"): datetime.timedelta,
        ("datetime", "timezone"): datetime.timezone,
        ("zoneinfo", "ZoneInfo"): zoneinfo.ZoneInfo,
        ("decimal", "Decimal"): decimal.Decimal,
        ("fractions", "Fraction"): fractions.Fraction,
        ("uuid", "UUID"): uuid.UUID,
        ("pathlib", "PosixPath"): pathlib.PosixPath,
        ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
        ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath,
        ("cbor2._types", "FrozenDict"): cbor2.FrozenDict,
    }
    # entries written before the package had subpackages name this module ``heros_archiver.faithful``:
    # a spool or dead-letter store survives an upgrade, so both names resolve to the same functions
    for module in (__name__, "heros_archiver.faithful"):
        allowed[(module, "_array")] = _array
        allowed[(module, "_masked_array")] = _masked_array
        allowed[(module, "_cbor_tag")] = _cbor_tag
        allowed[(module, "_cbor_simple_value")] = _cbor_simple_value
        allowed[(module, "_cbor_constant")] = _cbor_constant
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        for name in ("_reconstruct", "scalar"):
            allowed[(module, name)] = numpy_globals[name]
    for module in ("numpy._core.numeric", "numpy.core.numeric"):
        allowed[(module, "_frombuffer")] = numpy_globals["_frombuffer"]
    return allowed


#: ``getattr(obj, name)`` pairs a pickle may use (a ``ZoneInfo`` is pickled as ``ZoneInfo._unpickle(key)``).
_ALLOWED_ATTRIBUTES = {(zoneinfo.ZoneInfo, "_unpickle")}


def _restricted_getattr(obj: Any, name: str) -> Any:
    if (obj, name) not in _ALLOWED_ATTRIBUTES:
        raise UnfaithfulError(f"expected one of the whitelisted attributes, got getattr({safe_str(obj)}, {name!r})")
    return getattr(obj, name)


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only what the whitelist names: a planted or edited pickle cannot call anything else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnfaithfulError(
                f"expected only whitelisted types (numpy arrays and scalars, builtins, datetime, decimal, uuid, "
                f"pathlib), got a reference to {module}.{name}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnfaithfulError(f"expected no persistent references, got {safe_str(pid, 80)}")


@dataclass(frozen=True)
class Encoded:
    """A faithful copy: the pickle, and the raw bytes of the arrays it refers to (views, not copies)."""

    pickle: bytes
    buffers: list[memoryview]


def encode(value: Any) -> Encoded:
    """The faithful copy of ``value``, checked by reading it back; UnfaithfulError if there is none.

    Reading back costs little (arrays come back as views of their own memory) and proves that the
    copy can be loaded by the restricted unpickler, i.e. that it names only whitelisted types.
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = io.BytesIO()
        _Pickler(stream, protocol=_PROTOCOL, buffer_callback=buffers.append).dump(value)
        data = stream.getvalue()
        views = [buffer.raw() for buffer in buffers]
    except Exception as exc:
        raise UnfaithfulError(
            f"expected a value pickle can copy, got {type_name(value)} ({type(exc).__name__}: {safe_str(exc, 200)})"
        ) from exc
    decode(data, views)
    return Encoded(data, views)


def decode(data: bytes, buffers: Sequence[memoryview | bytearray]) -> Any:
    """The value a faithful copy holds; UnfaithfulError for a copy that is damaged or names a type not allowed."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), buffers=buffers).load()
    except UnfaithfulError:
        raise
    except Exception as exc:
        raise UnfaithfulError(
            f"expected a faithful copy that can be read back, got {len(data)} bytes that cannot "
            f"({type(exc).__name__}: {safe_str(exc, 200)})"
        ) from exc
