"""Reads a QuantSharp quantized checkpoint with the Python standard library only (docs/FORMAT.md).

usage: python3 read_quantized.py FILE.safetensors [TENSOR] [N]
Prints the per-layer entry of TENSOR and dequantizes its first N values of row 0 of its storage view
(format version 2: a weight of rank > 2 is stored as the [d0, d1*...*dn-1] matrix; version 1: the original shape).
With numpy + safetensors the same is: f = safe_open(path, "np"); q = f.get_tensor(name); ...
"""
import json, struct, sys

def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return header, data

def tensor_bytes(header, data, name):
    e = header[name]
    b, end = e["data_offsets"]
    return e, data[b:end]

def main():
    path = sys.argv[1]
    header, data = read(path)
    meta = header["__metadata__"]
    version = int(meta["quantsharp.format_version"])
    assert meta["quantsharp.format"] == "quantsharp.quantized" and version <= 2
    layers = json.loads(meta["quantsharp.layers"])
    name = sys.argv[2] if len(sys.argv) > 2 else next(iter(layers))
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    layer = layers[name]
    print(name, json.dumps(layer))
    e, raw = tensor_bytes(header, data, name)
    shape = layer["shape"]                     # the original shape
    if version >= 2 and len(shape) > 2:        # storage view: [d0, K], K = d1 * ... * dn-1 (row-major)
        cols = 1
        for d in shape[1:]:
            cols *= d
    else:
        cols = shape[-1]
    qtype = layer["qtype"]
    if qtype in ("int4", "uint4"):
        row = raw[: cols // 2]
        q = []
        for byte in row:                       # two values per byte, low nibble first
            for nib in (byte & 0xF, byte >> 4):
                q.append(nib - 16 if qtype == "int4" and nib >= 8 else nib)
    elif qtype == "int8":
        q = list(struct.unpack(f"<{cols}b", raw[:cols]))
    elif qtype == "uint8":
        q = list(raw[:cols])
    else:
        raise SystemExit("float16/bfloat16 entries are plain F16/BF16 tensors")
    _, sraw = tensor_bytes(header, data, name + ".scale")
    scales = struct.unpack(f"<{len(sraw)//4}f", sraw)
    zps = struct.unpack(f"<{len(sraw)//4}i", tensor_bytes(header, data, name + ".zero_point")[1]) \
        if name + ".zero_point" in header else [0] * len(scales)
    g = layer["granularity"]
    print("stored bytes (row 0):", " ".join(f"{b:02x}" for b in raw[: (count // 2 if qtype.endswith('4') else count)]))
    for i in range(count):
        if g.startswith("group:"):
            k = i // layer["group_size"]          # row 0: group index i // G
        elif g.startswith("per-channel"):
            k = 0                                  # row 0 of axis 0
        else:
            k = 0
        s, z = scales[k], zps[k]
        print(f"  x[0,{i}]: q={q[i]:4d} scale={s!r} zero_point={z} -> (q - z) * scale = {(q[i] - z) * s!r}")

if __name__ == "__main__":
    main()
