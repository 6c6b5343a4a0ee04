"""Writes golden tensors as safetensors without the safetensors package (Debian's python3-torch lacks it).

save(path, {name: torch.Tensor}) stores float tensors as F32 and integer tensors as I64 (bool as BOOL).
"""
import json
import struct

import torch


def save(path, tensors):
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        if t.dtype == torch.bool:
            dtype, arr = "BOOL", t.to(torch.uint8)
        elif t.dtype.is_floating_point:
            dtype, arr = "F32", t.to(torch.float32)
        else:
            dtype, arr = "I64", t.to(torch.int64)
        data = arr.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":"))
    raw += " " * ((8 - (len(raw) + 8) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw.encode())
        for b in blobs:
            f.write(b)
