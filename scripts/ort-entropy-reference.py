#!/usr/bin/env python3
"""Expected ONNX Runtime 1.30 entropy (KL) thresholds for inputs that are not in ../shared/reference.

An independent re-derivation of HistogramCollector (collect_value / merge_histogram / get_entropy_threshold in
onnxruntime/python/tools/quantization/calibrate.py) with real NumPy operations (histogram counts, float32 log,
pairwise float32 sums, floor division). NumPy 2's dtype rules (what ONNX Runtime 1.30 runs with) are written out
with explicit float32 casts, so NumPy 1.24+ gives the same numbers. It reproduces every ort_entropy_* threshold of
../shared/reference bit for bit (--check).

The inputs come from a SplitMix64 generator in plain double arithmetic (Irwin-Hall sums of 12 uniforms), which
tests/QuantSharp.Tests/Observers/OrtEntropyUnseenTests.cs reproduces exactly in C#.

    python3 scripts/ort-entropy-reference.py > tests/QuantSharp.Tests/Observers/Data/ort-entropy-unseen.json
    python3 scripts/ort-entropy-reference.py --check
"""
import json
import struct
import sys

import numpy as np

F = np.float32
M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & M64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next() >> 11) * (1.0 / (1 << 53))


def make_input(seed, n, sigma, outliers):
    rng = SplitMix64(seed)
    x = np.empty(n, dtype=F)
    for i in range(n):
        g = 0.0
        for _ in range(12):
            g += rng.uniform()
        x[i] = F((g - 6.0) * sigma)
    for _ in range(outliers):
        k = rng.next() % n
        x[k] = F(x[k] * F(8))
    return x


# ---- the collector, NumPy 2 semantics made explicit -------------------------------------------------------------

def linspace32(first, last, num):
    # NumPy 2 linspace on float32 endpoints: float32 delta and step, arange * step + start, last edge forced.
    div = num - 1
    delta = F(F(last) - F(first))
    step = F(delta / F(div))
    y = np.arange(0, num, dtype=F)
    y = (y / F(div)) * delta if step == 0 else y * step
    y = (y + F(first)).astype(F)
    y[-1] = F(last)
    return y


def histogram(a, bins, first, last):
    first, last = F(first), F(last)
    if first == last:
        first, last = F(first - F(0.5)), F(last + F(0.5))
    edges = linspace32(first, last, bins + 1)
    x = a[(a >= first) & (a <= last)].astype(F)
    idx = (((x - first) / F(last - first)) * F(bins)).astype(np.intp)
    idx[idx == bins] -= 1
    idx[x < edges[idx]] -= 1
    idx[(x >= edges[idx + 1]) & (idx != bins - 1)] += 1
    return np.bincount(idx, minlength=bins).astype(np.int64), edges


class Collector:
    def __init__(self, bins=2048):
        self.bins, self.hist = bins, None

    def collect(self, arrays):
        a = np.concatenate([np.asarray(x, dtype=F).ravel() for x in arrays])  # np.asarray(list).flatten()
        mn, mx = F(np.nanmin(a)), F(np.nanmax(a))
        t = F(max(abs(mn), abs(mx)))
        if self.hist is None:
            self.hist, self.edges = histogram(a, self.bins, -t, t)
            self.min, self.max, self.t = mn, mx, t
            return
        old = self.t
        if t <= old:
            self.hist = self.hist + histogram(a, len(self.hist), -old, old)[0]
        elif old == 0:
            h, self.edges = histogram(a, len(self.hist), -t, t)
            self.hist, self.t = h + self.hist, t
        else:
            n = len(self.hist)
            stride = F(F(F(2) * old) / F(n))
            k = int(F(np.floor_divide(F(t - old), stride) + F(1)))
            t = F(F(F(k) * stride) + old)
            h, self.edges = histogram(a, n + 2 * k, -t, t)
            h[k:k + n] += self.hist
            self.hist, self.t = h, t
        self.min, self.max = min(self.min, mn), max(self.max, mx)


def smooth(p):
    zeros = p == 0
    nz = int(zeros.sum())
    if nz == p.size:
        return None
    eps1 = 0.0001 * nz / (p.size - nz)
    return (p.astype(F) + np.where(zeros, F(0.0001), F(-eps1)).astype(F)).astype(F)


def divergence(p, q):
    pk = p / p.sum(dtype=F)
    qk = q / q.sum(dtype=F)
    with np.errstate(all="ignore"):
        r = (pk * np.log(pk / qk)).astype(F)
    r[(pk == 0) & (qk >= 0)] = 0
    r[~((pk > 0) & (qk > 0))] = np.inf
    return F(r.sum(dtype=F))


def entropy_thresholds(c, quantized=128):
    h, e = c.hist, c.edges
    n = h.size
    zero, half = n // 2, quantized // 2
    kl = np.zeros(zero - half + 1)
    for i in range(half, zero + 1):
        s, t = zero - i, min(zero + i + 1, n)
        window = h[s:t]
        p = window.copy()
        p[0] += h[:s].sum()
        p[-1] += h[t:].sum()
        m = window.size // quantized
        sums = np.array([window[k * m:(k + 1) * m].sum() for k in range(quantized)], dtype=np.int64)
        sums[-1] += window[quantized * m:].sum()
        q = np.zeros(p.size, dtype=np.int64)
        for k in range(quantized):
            norm = np.count_nonzero(p[k * m:(k + 1) * m])
            if norm:
                q[k * m:(k + 1) * m] = sums[k] / norm
        ps, qs = smooth(p), smooth(q)
        kl[i - half] = np.inf if ps is None or qs is None else divergence(ps, qs)
    best = int(np.argmin(kl)) + half
    lo, hi = e[zero - best], e[min(zero + best + 1, n)]
    return [float(max(lo, c.min)), float(min(hi, c.max))]


CASES = [
    # name, seed, n, sigma, outliers, batches
    ("gauss_8192", 1001, 8192, 1.0, 0, 1),
    ("gauss_5000_sigma2.5", 1002, 5000, 2.5, 0, 1),
    ("gauss_20000", 1003, 20000, 1.0, 0, 1),
    ("vector_1000_outliers", 2001, 1000, 3.0, 5, 1),
    ("vector_1500_outliers", 2004, 1500, 3.0, 7, 1),
    ("gauss_7680_in_3", 1004, 7680, 1.0, 0, 3),
    ("gauss_6144_in_3", 1005, 6144, 1.0, 0, 3),
    ("vector_999_outliers_in_3", 2002, 999, 3.0, 5, 3),
    ("vector_1200_outliers_in_3", 2003, 1200, 3.0, 6, 3),
]


def expected():
    out = {}
    for name, seed, n, sigma, outliers, batches in CASES:
        x = make_input(seed, n, sigma, outliers)
        parts = np.split(x, batches)
        one = Collector()
        one.collect(parts)                      # one collect call with every batch (quantize_static)
        merged = Collector()
        for part in parts:
            merged.collect([part])              # one collect call per batch
        out[name] = {
            "seed": seed, "n": n, "sigma": sigma, "outliers": outliers, "batches": batches,
            "thresholds": entropy_thresholds(one),
            "merged_thresholds": entropy_thresholds(merged), "merged_bins": int(merged.hist.size),
        }
    return out


def check_shared_reference():
    ref = "../shared/reference/pytorch/"
    cases = json.load(open(ref + "reference.json"))["cases"]
    with open(ref + "reference.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    ok = True
    for case, entry in cases.items():
        if "ort_calibration" not in entry:
            continue
        lo, hi = header[case + "/input"]["data_offsets"]
        c = Collector()
        c.collect([np.frombuffer(data[lo:hi], dtype=F)])
        got = entropy_thresholds(c)
        want = entry["ort_calibration"]["ort_entropy_sym"]["thresholds"]
        ok &= got == want
        print(case, "ok" if got == want else f"DIFFERS {got} vs {want}")
    return ok


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if check_shared_reference() else 1)
    json.dump({"generator": "scripts/ort-entropy-reference.py", "numpy": np.__version__,
               "bins": 2048, "quantized_bins": 128, "cases": expected()}, sys.stdout, indent=1)
    print()
