"""What a kernel takes, declared on its class, and the one check of a node against it.

A kernel class states its contract in class attributes (see ``Kernel``):
``inputs`` (fewest, most), ``const_inputs``, ``input_types`` (allowed element
types per position), ``input_ranks``, ``input_sizes`` (parameter vectors sized by
another input, :class:`Size`) and ``attributes`` (name → :class:`Attr`). ``check_node``
holds a graph node to that contract at load, so a malformed file fails there,
naming the node and the field, instead of deep inside ``run``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# element-type groups for input_types
FLOAT = (np.float32, np.float64)
INT8 = (np.int8, np.uint8)
INT16 = (np.int16,)  # widened weights of an unlearned FC layer (prover/int8.py)
SCALE = (np.float32,)
INT32 = (np.int32,)
INT64 = (np.int64,)
ANY_NUMBER = FLOAT + INT8 + (np.int32, np.int64)


@dataclass(frozen=True)
class Attr:
    """One attribute: its ONNX kind and the values the kernel handles."""
    kind: type                   # int, float, str, or list (a list of ints)
    lo: float | None = None      # bounds, for a number or every entry of a list
    hi: float | None = None
    length: int | None = None    # for a list: how many entries
    choices: tuple = ()          # if given, the only values handled
    required: bool = False
    axis_of: int | None = None   # an axis of this input: in [−r, r) (or [−r, r] with hi=1)

    def problem(self, value: Any, shapes: tuple = ()) -> str | None:
        """Why ``value`` is not acceptable, or None; ``shapes`` are the node's input shapes."""
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        ok_type = (isinstance(value, list) and all(isinstance(v, int) for v in value) if self.kind is list
                   else isinstance(value, self.kind) and not isinstance(value, bool))
        if not ok_type:
            return f"a {type(value).__name__} {value!r}, expected {_KIND_NAMES[self.kind]}"
        if self.choices and value not in self.choices:
            return f"{value!r}, expected one of {list(self.choices)}"
        if self.length is not None and len(value) != self.length:
            return f"{len(value)} value(s) {value}, expected {self.length}"
        if self.axis_of is not None:
            shape = shapes[self.axis_of] if self.axis_of < len(shapes) else None
            if shape is not None and not -len(shape) <= value < len(shape) + self.hi:
                return f"{value}, expected an axis of input {self.axis_of}'s {len(shape)} dimensions"
            return None
        values = value if isinstance(value, list) else [value] if self.kind is not str else []
        if any(not np.isfinite(v) for v in values):
            return f"{value!r}, expected finite numbers"
        if (self.lo is not None and any(v < self.lo for v in values)) or \
                (self.hi is not None and any(v > self.hi for v in values)):
            return f"{value!r}, expected values in [{self.lo}, {self.hi}]"
        return None


_KIND_NAMES = {int: "an int", float: "a float", str: "a string", list: "a list of ints"}


def Int(lo=None, hi=None, **kw) -> Attr:
    return Attr(int, lo, hi, **kw)


def Float(lo=None, hi=None, **kw) -> Attr:
    return Attr(float, lo, hi, **kw)


def Ints(length=None, lo=None, **kw) -> Attr:
    return Attr(list, lo, None, length, **kw)


def OneOf(*choices, **kw) -> Attr:
    return Attr(type(choices[0]), choices=choices, **kw)


def Axis(of: int = 0, end_allowed: bool = False) -> Attr:
    """An axis of input ``of`` (negative counts from the end); ``end_allowed``: r is too."""
    return Attr(int, hi=1 if end_allowed else 0, axis_of=of)


@dataclass(frozen=True)
class Size:
    """A parameter input's shape: one value, or a vector as long as dim ``axis`` of input
    ``of``; ``axis`` may be an attribute's name (its value, default 1) or (attribute,
    axis if it is 0, axis if it is 1), as Gemm's transB picks B's output axis."""
    of: int | None = None        # None: a single value
    axis: int | str | tuple = 0
    one_ok: bool = True          # a single value (or a last dim of 1) also broadcasts
    max_ndim: int = 1

    def problem(self, shape: tuple, shapes: list, attrs: dict) -> str | None:
        size = int(np.prod(shape))
        if len(shape) > self.max_ndim:
            return f"{len(shape)} dimensions, expected at most {self.max_ndim}"
        if self.of is None or (self.one_ok and size == 1):
            return None if size == 1 else "more than one value, expected one"
        axis = (self.axis if isinstance(self.axis, int) else attrs.get(self.axis, 1) if isinstance(self.axis, str)
                else self.axis[1 + bool(attrs.get(self.axis[0], 0))])
        ref = shapes[self.of] if self.of < len(shapes) else None
        if ref is None or not -len(ref) <= axis < len(ref) or ref[axis] is None:
            return None  # unknown here
        last = shape[-1] if shape else 1
        if last != ref[axis] and not (self.one_ok and last == 1):
            return f"shape {list(shape)}, expected {ref[axis]} values (dim {axis} of input {self.of})"
        return None


# the attributes of a 2-D window (Conv and the pools)
WINDOW = {"auto_pad": OneOf("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"),
          "kernel_shape": Ints(2, lo=1), "strides": Ints(2, lo=1), "dilations": Ints(2, lo=1),
          "pads": Ints(4, lo=0)}
POOL = {**WINDOW, "kernel_shape": Ints(2, lo=1, required=True), "ceil_mode": OneOf(0, 1)}


def _one_of(dtype, allowed) -> bool:
    return not isinstance(dtype, str) and np.dtype(dtype) in [np.dtype(t) for t in allowed]


def check_node(kernel: type, node, dtypes: dict[str, Any], shapes: dict[str, tuple],
               constants) -> None:
    """Raise ValueError naming the node and the field where ``node`` breaks ``kernel``'s
    declaration. ``dtypes``/``shapes`` map tensor names to what is known of them (a
    missing name is unknown; a shape may hold None dims); ``constants`` maps initializer
    names to their values."""
    where = f"node {node.name!r} ({node.op_type})"
    names = list(node.inputs)
    while names and not names[-1]:
        names.pop()  # trailing empty names are absent optional inputs
    lo, hi = kernel.inputs
    if not lo <= len(names) <= hi:
        want = lo if lo == hi else f"{lo} to {hi}"
        raise ValueError(f"{where}: {len(names)} input(s), expected {want}")
    in_shapes = [shapes.get(name) if name else None for name in names]
    for attr, value in node.attrs.items():
        spec = kernel.attributes.get(attr)
        if spec is None:
            known = ", ".join(sorted(kernel.attributes)) or "none"
            raise ValueError(f"{where}: unknown attribute {attr!r} (this op takes: {known})")
        problem = spec.problem(value, in_shapes)
        if problem:
            raise ValueError(f"{where}: attribute {attr!r} is {problem}")
    missing = [a for a, spec in kernel.attributes.items() if spec.required and a not in node.attrs]
    if missing:
        raise ValueError(f"{where}: missing required attribute(s) {missing}")
    for i, name in enumerate(names):
        if not name and i < lo:
            raise ValueError(f"{where}: input {i} is required but empty")
        if name and i in kernel.const_inputs and name not in constants:
            raise ValueError(f"{where}: input {i} ({name!r}) must be an initializer")
        allowed = kernel.input_types[i] if i < len(kernel.input_types) else None
        dtype = dtypes.get(name)  # a numpy type, an ONNX type name, or None (unknown)
        if name and allowed is not None and dtype is not None and not _one_of(dtype, allowed):
            name_of = dtype if isinstance(dtype, str) else np.dtype(dtype).name
            raise ValueError(f"{where}: input {i} ({name!r}) has element type {name_of}, "
                             f"expected {' or '.join(np.dtype(t).name for t in allowed)}")
        rank = kernel.input_ranks.get(i)
        if name and rank is not None and len(shapes.get(name, (0,) * rank)) != rank:
            raise ValueError(f"{where}: input {i} ({name!r}) has {len(shapes[name])} dimension(s), "
                             f"expected {rank}")
    for i, rule in kernel.input_sizes.items():
        problem = rule.problem(in_shapes[i], in_shapes, node.attrs) if i < len(names) and \
            in_shapes[i] is not None and None not in in_shapes[i] else None
        if problem:
            raise ValueError(f"{where}: input {i} ({names[i]!r}) has {problem}")
    kernel.check_constants(node, [constants.get(name) if name else None for name in names], in_shapes)
