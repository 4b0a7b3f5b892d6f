"""The Coral Edge TPU's supported-operator table and the checks of one operator against it and the
model requirements, read from a .tflite's flatbuffer (the sources: edgebus.export.edgetpu's docstring)."""

from __future__ import annotations

import numpy as np


# TFLite builtin operator -> (name in Coral's table, known limitation, confirmed in the retrieved text)
SUPPORTED_OPS: dict[str, tuple[str, str, bool]] = {
    "ADD": ("Add", "", True),
    "AVERAGE_POOL_2D": ("AveragePool2d", "No fused activation function.", True),
    "CONCATENATION": ("Concatenation", "No fused activation function. If any input is a compile-time constant tensor, "
                      "there must be only 2 inputs, and this constant tensor must be all zeros (effectively, a zero-padding op).", True),
    "CONV_2D": ("Conv2d", "Must use the same dilation in x and y dimensions.", True),
    "DEPTHWISE_CONV_2D": ("DepthwiseConv2d", "Must use the same dilation in x and y dimensions.", True),
    "EXPAND_DIMS": ("ExpandDims", "", True),
    "FULLY_CONNECTED": ("FullyConnected", "Only the default format is supported for fully-connected weights. "
                        "Output tensor is one-dimensional.", True),
    "L2_NORMALIZATION": ("L2Normalization", "", True),
    "LOGISTIC": ("Logistic", "", True),
    "LSTM": ("LSTM", "Unidirectional LSTM only.", True),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": ("LSTM", "Unidirectional LSTM only.", True),
    "MAXIMUM": ("Maximum", "", True),
    "MAX_POOL_2D": ("MaxPool2d", "No fused activation function.", True),
    "MEAN": ("Mean", "No reduction in batch dimension. If a z-reduction, the z-dimension must be multiple of 4.", True),
    "MINIMUM": ("Minimum", "", True),
    "MUL": ("Mul", "", True),
    "PACK": ("Pack", "No packing in batch dimension.", True),
    "PAD": ("Pad", "No padding in batch dimension.", True),
    "PRELU": ("PReLU", "Alpha must be 1-dimensional (only the innermost dimension can be >1 size).", True),
    "QUANTIZE": ("Quantize", "", True),
    "REDUCE_MAX": ("ReduceMax", "Cannot operate on the batch dimension.", True),
    "REDUCE_MIN": ("ReduceMin", "Cannot operate on the batch dimension.", True),
    "RELU": ("ReLU", "", True),
    "RELU6": ("ReLU6", "", True),
    "RELU_N1_TO_1": ("ReLUN1To1", "", True),
    "RESHAPE": ("Reshape", "Certain reshapes might not be mapped for large tensor sizes.", True),
    "RESIZE_BILINEAR": ("ResizeBilinear", "Input/output is a 3-dimensional tensor. Depending on input/output size, "
                        "this operation might not be mapped to the Edge TPU to avoid loss in precision.", True),
    "RESIZE_NEAREST_NEIGHBOR": ("ResizeNearestNeighbor", "Input/output is a 3-dimensional tensor. Depending on input/output "
                                "size, this operation may not be mapped to the Edge TPU to avoid loss in precision.", True),
    "SLICE": ("Slice", "", True),
    "SOFTMAX": ("Softmax", "Supports only 1D input tensor with a max of 16,000 elements.", True),
    "SPACE_TO_DEPTH": ("SpaceToDepth", "", True),
    "SPLIT": ("Split", "", True),
    "SQUEEZE": ("Squeeze", "Supported only when input tensor dimensions that have leading 1s (that is, no relayout needed).", True),
    "STRIDED_SLICE": ("StridedSlice", "Supported only when all strides are equal to 1 (that is, effectively a Stride op), "
                      "and with ellipsis-axis-mask == 0, and new-axis-max == 0.", True),
    "SUB": ("Sub", "", True),
    "TANH": ("Tanh", "", True),
    "RSQRT": ("Rsqrt", "", False),
    "SQUARED_DIFFERENCE": ("Squared-difference", "", False),
    "SUM": ("Sum", "", False),
    "TRANSPOSE": ("Transpose", "", False),
    "TRANSPOSE_CONV": ("TransposeConv", "", False),
}

_POOL_LIKE = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
_BATCH_AXIS_OPS = {"MEAN", "REDUCE_MAX", "REDUCE_MIN", "PACK", "SUM"}
_SOFTMAX_MAX = 16000


def tensor_shape(t) -> list[int]:
    return [int(d) for d in (t.shape if t.shape is not None else [])]


def _signature(t) -> list[int]:
    sig = t.shapeSignature
    return [int(d) for d in sig] if sig is not None and len(sig) else tensor_shape(t)


def _const(model, t) -> bool:
    b = model.buffers[t.buffer] if 0 < t.buffer < len(model.buffers) else None
    return bool(b is not None and ((b.data is not None and len(b.data)) or getattr(b, "size", 0)))


def _const_values(model, t):
    b = model.buffers[t.buffer]
    if b.data is None or not len(b.data):
        return None
    dt = {2: np.int32, 4: np.int64, 9: np.int8, 3: np.uint8, 0: np.float32}.get(t.type)
    return None if dt is None else np.frombuffer(bytes(bytearray(b.data)), dtype=dt).reshape(tensor_shape(t) or [-1])


def op_problems(op_name, op, model, tensors, type_names) -> tuple[list[str], list[str]]:
    """(blocking problems, warnings) of one operator."""
    if op_name not in SUPPORTED_OPS:
        return [f"{op_name} is not in the Edge TPU's supported operations"], []
    ins = [tensors[i] for i in (op.inputs if op.inputs is not None else []) if i >= 0]
    outs = [tensors[i] for i in (op.outputs if op.outputs is not None else []) if i >= 0]
    opts = op.builtinOptions
    problems = [p for t in ins + outs for p in _tensor_problems(model, t, type_names)]
    problems += _option_problems(op_name, opts, outs)
    if op_name == "CONCATENATION":
        problems += _concat_problems(model, ins)
    problems += _batch_problems(op_name, model, ins, opts)
    problems += _shape_problems(op_name, model, ins, opts)
    warnings = []
    if op_name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        warnings.append(f"{op_name}: depending on input/output size the compiler may leave it on the CPU to "
                        "avoid precision loss")
    if op_name == "RESHAPE":
        warnings.append("RESHAPE: certain reshapes might not be mapped for large tensor sizes")
    if not SUPPORTED_OPS[op_name][2]:
        warnings.append(f"{op_name}: listed in the current Coral table but not confirmed from the retrieved text")
    return problems, warnings


def _tensor_problems(model, t, type_names) -> list[str]:
    """The model requirements on each tensor: 8-bit, a static shape, at most 3 dimensions of size > 1."""
    problems = []
    tname = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    const = _const(model, t)
    dtype = type_names.get(t.type, str(t.type))
    if not const and dtype not in ("INT8", "UINT8"):
        problems.append(f"tensor '{tname}' is {dtype.lower()}, not 8-bit quantized")
    elif const and dtype not in ("INT8", "UINT8", "INT32", "INT64"):
        problems.append(f"constant tensor '{tname}' is {dtype.lower()}, not quantized")
    if any(d < 0 for d in _signature(t)):
        problems.append(f"tensor '{tname}' has a dynamic shape {_signature(t)}; export a batch-1 static graph")
    shp = tensor_shape(t)
    if not const and len(shp) > 3 and any(d > 1 for d in shp[:-3]):
        problems.append(f"tensor '{tname}' {shp}: more than 3 dimensions with size > 1 (only the 3 innermost "
                        "may be > 1)")
    return problems


def _option_problems(op_name, opts, outs) -> list[str]:
    """The table's limits on an op's options (fused activation, dilation, weights format) and FC output."""
    problems = []
    act = getattr(opts, "fusedActivationFunction", 0) if opts is not None else 0
    if op_name in _POOL_LIKE and act:
        problems.append(f"{op_name} has a fused activation function")
    if op_name in ("CONV_2D", "DEPTHWISE_CONV_2D") and opts is not None:
        if getattr(opts, "dilationHFactor", 1) != getattr(opts, "dilationWFactor", 1):
            problems.append(f"{op_name} uses different dilations in y and x")
    if op_name == "FULLY_CONNECTED":
        if opts is not None and getattr(opts, "weightsFormat", 0) != 0:
            problems.append("FULLY_CONNECTED weights are not in the default format")
        if outs and sum(d > 1 for d in tensor_shape(outs[0])) > 1:
            problems.append(f"FULLY_CONNECTED output {tensor_shape(outs[0])} is not one-dimensional")
    return problems


def _concat_problems(model, ins) -> list[str]:
    """A concatenation with a constant input maps only as a zero padding: 2 inputs, the constant all zeros."""
    consts = [t for t in ins if _const(model, t)]

    def is_zero(t):  # all real zeros: every stored value equals the zero point
        v = _const_values(model, t)
        q = t.quantization
        zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
        return v is not None and bool(np.all(v == zp))

    if consts and (len(ins) != 2 or not all(is_zero(t) for t in consts)):
        return ["CONCATENATION with a constant input is supported only as a 2-input zero padding"]
    return []


def _batch_problems(op_name, model, ins, opts) -> list[str]:
    """Reductions, packing and padding leave the batch alone; a channel mean needs a multiple of 4."""
    problems = []
    if op_name in _BATCH_AXIS_OPS and len(ins) >= 2 and _const(model, ins[1]):
        axes = _const_values(model, ins[1])
        rank = len(tensor_shape(ins[0]))
        if axes is not None:
            axes = [int(a) % max(rank, 1) for a in np.ravel(axes)]
            if 0 in axes and rank > 1:
                problems.append(f"{op_name} reduces over the batch dimension")
            if op_name == "MEAN" and rank >= 1 and (rank - 1) in axes and tensor_shape(ins[0])[-1] % 4:
                problems.append(f"MEAN over channels: the channel count {tensor_shape(ins[0])[-1]} is not a multiple of 4")
    if op_name == "PACK" and opts is not None and getattr(opts, "axis", 1) == 0:
        problems.append("PACK along the batch dimension")
    if op_name == "PAD" and len(ins) >= 2 and _const(model, ins[1]):
        pads = _const_values(model, ins[1])
        if pads is not None and pads.ndim == 2 and pads.shape[0] >= 1 and np.any(pads[0] != 0):
            problems.append("PAD pads the batch dimension")
    return problems


def _shape_problems(op_name, model, ins, opts) -> list[str]:
    """The table's limits on the input of a softmax (1-D, <= 16,000), squeeze (leading 1s) and strided slice."""
    problems = []
    if op_name == "SOFTMAX" and ins:
        shp = tensor_shape(ins[0])
        if sum(d > 1 for d in shp) > 1:
            problems.append(f"SOFTMAX input {shp} is not one-dimensional")
        if int(np.prod(shp or [0])) > _SOFTMAX_MAX:
            problems.append(f"SOFTMAX input has {int(np.prod(shp))} elements (> {_SOFTMAX_MAX})")
    if op_name == "SQUEEZE" and ins:
        shp = tensor_shape(ins[0])
        lead = 0
        while lead < len(shp) and shp[lead] == 1:
            lead += 1
        dims = list(getattr(opts, "squeezeDims", None) or []) if opts is not None else []
        dims = [d % len(shp) for d in dims] if dims else [i for i, d in enumerate(shp) if d == 1]
        if any(d >= lead for d in dims):
            problems.append(f"SQUEEZE of {shp} needs a relayout (only leading 1s can be squeezed)")
    if op_name == "STRIDED_SLICE":
        if opts is not None and (getattr(opts, "ellipsisMask", 0) or getattr(opts, "newAxisMask", 0)):
            problems.append("STRIDED_SLICE with an ellipsis or new-axis mask")
        if len(ins) >= 4 and _const(model, ins[3]):
            strides = _const_values(model, ins[3])
            if strides is not None and np.any(strides != 1):
                problems.append("STRIDED_SLICE with strides other than 1")
    return problems
