namespace QuantSharp.Observers;

/// <summary>
/// The histogram calibration of ONNX Runtime's <c>HistogramCollector</c>
/// (onnxruntime/python/tools/quantization/calibrate.py, 1.30), reimplemented: NumPy 2's float32 arithmetic is
/// followed step by step (bin edges from a float32 <c>linspace</c>, bin index by division then a one-bin
/// correction against the edges), so thresholds agree with ONNX Runtime's to the bit.
/// </summary>
/// <remarks>
/// <para>Two modes, as ONNX Runtime: <em>signed</em> (entropy, and two-sided percentile): a histogram of the values on
/// [-t, t] with t = max|x|, widened symmetrically by whole bins when a later collection exceeds it; <em>absolute</em>
/// (symmetric percentile): a histogram of |x| on [min|x|, max|x|], extended on the right by whole bins.</para>
/// <para>What one collection is. ONNX Runtime's calibrators (<c>HistogramCalibrater.collect_data</c>, used by
/// <c>quantize_static</c>) run every batch of the data reader first and then call <c>HistogramCollector.collect</c>
/// once with the list of batches, which <c>np.asarray(...).flatten()</c> turns into one array: one histogram over
/// the range of all the data. Only separate <c>collect</c> calls are merged (the range grows by whole bins of the
/// old width). So by default every batch given to <see cref="Collect(FloatChunks)"/> before the thresholds are asked for is one
/// collection (the values are kept until then, as ONNX Runtime keeps the outputs); with <c>mergeEachBatch</c> each
/// batch is a <c>collect</c> call of its own (bounded memory). The two differ whenever a later batch exceeds the
/// range of the earlier ones: the grown histogram has other bins, and the chosen thresholds move by up to a
/// hundred bins on Gaussian data split in three.</para>
/// </remarks>
internal sealed class OrtHistogram
{
    private readonly int _numBins;
    private readonly bool _absolute;
    private readonly bool _mergeEachBatch;
    private readonly List<FloatChunks> _pending = [];
    private long[]? _hist;
    private float[]? _edges;
    private float _min, _max, _threshold;

    public OrtHistogram(int numBins, bool absolute, bool mergeEachBatch = false)
    {
        _numBins = numBins;
        _absolute = absolute;
        _mergeEachBatch = mergeEachBatch;
    }

    public bool IsEmpty => _hist is null && _pending.Count == 0;
    public float Min { get { Flush(); return _min; } }
    public float Max { get { Flush(); return _max; } }
    public long[] Counts { get { Flush(); return _hist ?? throw new InvalidOperationException("Nothing collected."); } }
    public float[] Edges { get { Flush(); return _edges ?? throw new InvalidOperationException("Nothing collected."); } }

    public void Reset()
    {
        _hist = null;
        _edges = null;
        _pending.Clear();
    }

    /// <summary>Adds one batch (finite values, at least one): kept for the next collection, or collected now when merging each batch.</summary>
    public unsafe void Collect(ReadOnlySpan<float> values)
    {
        fixed (float* p = values) Collect(FloatChunks.Over(p, values.Length, [values.Length]));
    }

    /// <summary>Adds one batch delivered in chunks: copied and kept for the next collection, or (when merging each
    /// batch) collected now in two passes over the chunks without a copy, so that memory stays bounded.</summary>
    public void Collect(FloatChunks values)
    {
        if (!_mergeEachBatch)
        {
            _pending.Add(values.Copy());
            return;
        }
        _pending.Add(values);
        try { Flush(); }
        finally { _pending.Clear(); }
    }

    /// <summary>One <c>HistogramCollector.collect</c> call over the pending batches, as one flattened array.</summary>
    private void Flush()
    {
        if (_pending.Count == 0) return;
        // np.nanmin / np.nanmax of the whole collection (float32).
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        ForEachChunk(_pending, (chunk, _) =>
        {
            foreach (float v in chunk)
            {
                if (v < min) min = v;
                if (v > max) max = v;
            }
        });
        if (_absolute) CollectAbsolute(_pending, min, max);
        else CollectValue(_pending, min, max);
        _pending.Clear();
    }

    private void CollectValue(List<FloatChunks> values, float min, float max)
    {
        // threshold = np.array(max(|min|, |max|), dtype=float32); histogram on (-threshold, threshold).
        float threshold = MathF.Max(MathF.Abs(min), MathF.Abs(max));
        if (_hist is null)
        {
            (_hist, _edges) = UniformHistogram(values, _numBins, -threshold, threshold);
            (_min, _max, _threshold) = (min, max, threshold);
            return;
        }
        float oldThreshold = _threshold;
        if (threshold <= oldThreshold)
        {
            var (h, _) = UniformHistogram(values, _hist.Length, -oldThreshold, oldThreshold);
            for (int i = 0; i < h.Length; i++) _hist[i] += h[i];
        }
        else if (oldThreshold == 0f)
        {
            var (h, e) = UniformHistogram(values, _hist.Length, -threshold, threshold);
            for (int i = 0; i < h.Length; i++) h[i] += _hist[i];
            (_hist, _edges, _threshold) = (h, e, threshold);
        }
        else
        {
            // Grow by whole bins of the old width on both sides, so that the old counts stay aligned. Every step is
            // float32 as in NumPy 2 (the Python ints are weak scalars): stride = 2 * t / n, floor division, then
            // new t = k * stride + t; the new histogram's edges come from linspace over the new range.
            int oldBins = _hist.Length;
            float oldStride = 2f * oldThreshold / oldBins;
            int halfIncreased = (int)(FloorDivide(threshold - oldThreshold, oldStride) + 1f);
            int newBins = oldBins + 2 * halfIncreased;
            float newThreshold = halfIncreased * oldStride + oldThreshold;
            var (h, e) = UniformHistogram(values, newBins, -newThreshold, newThreshold);
            for (int i = 0; i < oldBins; i++) h[halfIncreased + i] += _hist[i];
            (_hist, _edges, _threshold) = (h, e, newThreshold);
        }
        _min = MathF.Min(_min, min);
        _max = MathF.Max(_max, max);
    }

    private void CollectAbsolute(List<FloatChunks> values, float min, float max)
    {
        // |x| is taken on the fly (no copy of the data): min|x| and max|x| first.
        float amin = float.PositiveInfinity, amax = float.NegativeInfinity;
        ForEachChunk(values, (chunk, _) =>
        {
            foreach (float v in chunk)
            {
                float a = MathF.Abs(v);
                if (a < amin) amin = a;
                if (a > amax) amax = a;
            }
        });
        if (_hist is null)
        {
            (_hist, _edges) = UniformHistogram(values, _numBins, amin, amax, absolute: true);
            (_min, _max) = (min, max);
            return;
        }
        float[] edges = _edges!;
        if (amax > edges[^1])
        {
            // Extend on the right by bins of the first bin's width (np.arange in float32).
            float width = edges[1] - edges[0];
            float start = edges[^1] + width, stop = amax + width;
            int extra = Math.Max(0, (int)Math.Ceiling((double)((stop - start) / width)));
            var grown = new float[edges.Length + extra];
            edges.CopyTo(grown, 0);
            if (extra > 0) grown[edges.Length] = start;
            if (extra > 1)
            {
                float delta = (start + width) - start;
                for (int i = 2; i < extra; i++) grown[edges.Length + i] = start + i * delta;
                grown[edges.Length + 1] = start + delta;
            }
            edges = grown;
        }
        var h = EdgesHistogram(values, edges, absolute: true);
        for (int i = 0; i < _hist.Length; i++) h[i] += _hist[i];
        (_hist, _edges) = (h, edges);
        _min = MathF.Min(_min, min);
        _max = MathF.Max(_max, max);
    }

    /// <summary>
    /// ONNX Runtime's percentile thresholds: symmetric (absolute mode) gives (-e, e) with e the edge where the
    /// cumulative share first reaches <paramref name="percentile"/>%; two-sided cuts (100 - p)/2 % on each side.
    /// Both are clipped to the observed [min, max].
    /// </summary>
    public (float Low, float High) PercentileThresholds(double percentile)
    {
        long[] hist = Counts;
        float[] edges = Edges;
        long total = 0;
        foreach (long c in hist) total += c;
        var cdf = new double[hist.Length];
        double acc = 0;
        for (int i = 0; i < hist.Length; i++)
        {
            acc += (double)hist[i] / total;
            cdf[i] = acc;
        }
        float low, high;
        if (_absolute)
        {
            float e = edges[SearchSortedLeft(cdf, percentile / 100.0)];
            (low, high) = (-e, e);
        }
        else
        {
            double cut = (100.0 - percentile) / 200.0;
            low = edges[SearchSortedLeft(cdf, cut)];
            high = edges[SearchSortedLeft(cdf, 1.0 - cut)];
        }
        return Clip(low, high);
    }

    /// <summary>
    /// The TensorRT entropy threshold as ONNX Runtime computes it: for every symmetric window of at least
    /// <paramref name="quantizedBins"/> bins around the zero bin, the KL divergence between the clipped histogram
    /// (outliers folded into the end bins) and its <paramref name="quantizedBins"/>-level quantization; the window
    /// with the smallest divergence (first on ties) gives the thresholds, clipped to the observed [min, max].
    /// Arithmetic follows ONNX Runtime's float32 NumPy code (integer q, eps smoothing, float32 KL sums).
    /// </summary>
    /// <param name="quantizedBins">Levels of the quantized histogram (128 for 8-bit, as TensorRT).</param>
    /// <param name="searchStart">The smallest window searched, as a fraction of the histogram's half range in [0, 1):
    /// 0 (ONNX Runtime) searches every window of at least <paramref name="quantizedBins"/> bins; 0.5 only thresholds in
    /// 50-100% of the range (TensorRT's calibrator, which avoids overly narrow ranges).</param>
    public (float Low, float High) EntropyThresholds(int quantizedBins, double searchStart = 0)
    {
        long[] hist = Counts;
        float[] edges = Edges;
        int numBins = hist.Length;
        int zeroBin = numBins / 2;
        int halfQuantized = quantizedBins / 2;
        if (zeroBin - halfQuantized + 1 < 1)
            throw new InvalidOperationException($"The histogram has {numBins} bins, fewer than the {quantizedBins} quantized bins.");
        int first = Math.Min(zeroBin, Math.Max(halfQuantized, (int)Math.Ceiling(searchStart * zeroBin)));

        // Candidates: i = first .. numBins/2 in steps of one bin, window [zero - i, min(zero + i + 1, n)).
        var kl = new WindowDivergence(hist, quantizedBins);
        float bestKl = float.PositiveInfinity;
        int bestIndex = 0;
        for (int i = first; i <= zeroBin; i++)
        {
            float d = kl.Of(zeroBin - i, Math.Min(zeroBin + i + 1, numBins));
            // The divergence is float32 (stored in ONNX Runtime's float64 array without change); np.argmin takes the
            // first smallest (index 0 when all are infinite; no NaN can arise from positive finite terms).
            if (i == first || d < bestKl)
            {
                bestKl = d;
                bestIndex = i;
            }
        }
        // The thresholds are the float32 bin edges of the chosen window, then clipped to the data's [min, max].
        int bestStart = zeroBin - bestIndex;
        int bestEnd = Math.Min(zeroBin + bestIndex + 1, numBins);
        return Clip(edges[bestStart], edges[bestEnd]);
    }

    /// <summary>
    /// The KL divergence of the entropy search for the window of bins holding [<paramref name="low"/>,
    /// <paramref name="high"/>] (any window, not only the symmetric ones the search tries): how much information a
    /// clipping range loses, on the same scale as <see cref="EntropyThresholds"/> minimises.
    /// </summary>
    public float Divergence(float low, float high, int quantizedBins)
    {
        long[] hist = Counts;
        float[] edges = Edges;
        int start = Math.Clamp(BinOf(edges, low), 0, hist.Length - 1);
        int end = Math.Clamp(BinOf(edges, high) + 1, start + 1, hist.Length);
        return new WindowDivergence(hist, quantizedBins).Of(start, end);
    }

    private static int BinOf(float[] edges, float x)
    {
        int i = Array.BinarySearch(edges, x);
        if (i < 0) i = ~i - 1;
        return Math.Min(i, edges.Length - 2);
    }

    /// <summary>
    /// ONNX Runtime's divergence of one window [start, end) of a histogram: p is the window with the counts left and
    /// right of it added to its end bins; q quantizes the window WITHOUT the outliers to <c>quantizedBins</c> levels
    /// and spreads each level over its non-zero positions; both smoothed; KL(p || q) in float32.
    /// </summary>
    private sealed class WindowDivergence
    {
        private readonly long[] _hist, _prefix, _p, _q, _quantized;
        private readonly float[] _pf, _qf, _terms;
        private readonly int _quantizedBins;

        public WindowDivergence(long[] hist, int quantizedBins)
        {
            int n = hist.Length;
            _hist = hist;
            _prefix = new long[n + 1];
            for (int i = 0; i < n; i++) _prefix[i + 1] = _prefix[i] + hist[i];
            _p = new long[n];
            _q = new long[n];
            _pf = new float[n];
            _qf = new float[n];
            _terms = new float[n];
            _quantized = new long[quantizedBins];
            _quantizedBins = quantizedBins;
        }

        public float Of(int start, int end)
        {
            int numBins = _hist.Length, size = end - start;
            var sliced = _hist.AsSpan(start, size);
            var pSpan = _p.AsSpan(0, size);
            // p (int64): the window with the counts left and right of it added to its end bins.
            sliced.CopyTo(pSpan);
            pSpan[0] += _prefix[start];
            pSpan[size - 1] += _prefix[numBins] - _prefix[end];

            // The quantized bins sum the window WITHOUT the outliers; the size % quantizedBins tail bins go into
            // the last quantized bin. (The search's windows are wider than quantizedBins; a narrower window, possible
            // for Divergence, has one level per bin.)
            int levels = Math.Min(_quantizedBins, size);
            int merged = size / levels;
            var quantized = _quantized;
            for (int k = 0; k < levels; k++)
            {
                long s = 0;
                for (int j = k * merged; j < (k + 1) * merged; j++) s += sliced[j];
                quantized[k] = s;
            }
            for (int j = levels * merged; j < size; j++) quantized[levels - 1] += sliced[j];

            // q (int64): each quantized bin spread evenly over the positions where p (with outliers) is non-zero,
            // written to every position of its group, zeros included; the tail positions stay 0. The share is a
            // float64 division (int64 / int64) truncated toward zero when stored into the int64 array.
            var qSpan = _q.AsSpan(0, size);
            qSpan.Clear();
            for (int k = 0; k < levels; k++)
            {
                int s0 = k * merged, s1 = s0 + merged;
                long norm = 0;
                for (int j = s0; j < s1; j++) if (pSpan[j] != 0) norm++;
                if (norm != 0)
                {
                    long value = (long)((double)quantized[k] / norm);
                    for (int j = s0; j < s1; j++) qSpan[j] = value;
                }
            }

            if (!Smooth(pSpan, _pf.AsSpan(0, size)) || !Smooth(qSpan, _qf.AsSpan(0, size)))
                return float.PositiveInfinity;
            return Entropy(_pf.AsSpan(0, size), _qf.AsSpan(0, size), _terms.AsSpan(0, size));
        }
    }

    private (float, float) Clip(float low, float high)
    {
        if (low < _min) low = _min;
        if (high > _max) high = _max;
        // All data inside one bin (e.g. a constant tensor): ONNX Runtime returns an inverted range here
        // (low = min above high = an edge below max); the data's own range is the honest answer.
        if (low > high) (low, high) = (_min, _max);
        return (low, high);
    }

    /// <summary>
    /// ONNX Runtime's smooth_distribution (eps = 1e-4); false (its <c>None</c>, divergence infinite) when every entry
    /// is zero. eps1 = eps * zeros / nonzeros is a Python float (double, in that order); the array is float32 and the
    /// Python floats join it as float32 (NumPy 2 weak scalars): zeros become 0 + (float)eps, the others
    /// (float)p - (float)eps1.
    /// </summary>
    private static bool Smooth(ReadOnlySpan<long> p, Span<float> result)
    {
        int zeros = 0;
        foreach (long v in p) if (v == 0) zeros++;
        int nonzeros = p.Length - zeros;
        if (nonzeros == 0) return false;
        double eps1 = 0.0001 * zeros / nonzeros;
        float epsF = 0.0001f, eps1F = (float)eps1;
        for (int i = 0; i < p.Length; i++)
            result[i] = p[i] == 0 ? (float)p[i] + epsF : (float)p[i] + (-eps1F);
        return true;
    }

    /// <summary>
    /// KL divergence as ONNX Runtime's own float32 <c>entropy</c> / <c>rel_entr</c>: normalise both by their pairwise
    /// float32 sums, terms p * log(p / q) in float32, pairwise float32 sum. Its <c>rel_entr</c> sets 0 where p == 0
    /// and q >= 0 and THEN infinity wherever not (p > 0 and q > 0), so p == 0 gives infinity (SciPy's gives 0); after
    /// smoothing no entry is 0, but the rule is kept as written.
    /// </summary>
    private static float Entropy(Span<float> p, Span<float> q, Span<float> terms)
    {
        float ps = PairwiseSum(p), qs = PairwiseSum(q);
        for (int i = 0; i < p.Length; i++)
        {
            float pk = p[i] / ps, qk = q[i] / qs;
            if (!(pk > 0 && qk > 0)) return float.PositiveInfinity;
            terms[i] = pk * MathF.Log(pk / qk);
        }
        return PairwiseSum(terms);
    }

    /// <summary>NumPy's float32 pairwise summation (8 accumulators, blocks of 128).</summary>
    internal static float PairwiseSum(ReadOnlySpan<float> a)
    {
        int n = a.Length;
        if (n < 8)
        {
            float res = -0f;
            for (int i = 0; i < n; i++) res += a[i];
            return 0f + res;
        }
        return 0f + PairwiseBlock(a);
    }

    private static float PairwiseBlock(ReadOnlySpan<float> a)
    {
        int n = a.Length;
        if (n < 8)
        {
            float res = -0f;
            for (int i = 0; i < n; i++) res += a[i];
            return res;
        }
        if (n <= 128)
        {
            float r0 = a[0], r1 = a[1], r2 = a[2], r3 = a[3], r4 = a[4], r5 = a[5], r6 = a[6], r7 = a[7];
            int i;
            for (i = 8; i < n - (n % 8); i += 8)
            {
                r0 += a[i]; r1 += a[i + 1]; r2 += a[i + 2]; r3 += a[i + 3];
                r4 += a[i + 4]; r5 += a[i + 5]; r6 += a[i + 6]; r7 += a[i + 7];
            }
            float res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7));
            for (; i < n; i++) res += a[i];
            return res;
        }
        int n2 = n / 2;
        n2 -= n2 % 8;
        return PairwiseBlock(a[..n2]) + PairwiseBlock(a[n2..]);
    }

    private static int SearchSortedLeft(double[] sorted, double value)
    {
        int lo = 0, hi = sorted.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (sorted[mid] < value) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    /// <summary>NumPy's floor division of float32 values (fmod-based, as npy_divmod).</summary>
    internal static float FloorDivide(float a, float b)
    {
        float mod = a % b;
        float div = (a - mod) / b;
        if (mod != 0 && (b < 0) != (mod < 0)) div -= 1f;
        if (div == 0) return MathF.CopySign(0f, a / b);
        float floor = MathF.Floor(div);
        if (div - floor > 0.5f) floor += 1f;
        return floor;
    }

    /// <summary>NumPy 2's float32 <c>linspace(first, last, count, endpoint=True)</c>.</summary>
    internal static float[] Linspace(float first, float last, int count)
    {
        var y = new float[count];
        int div = count - 1;
        float delta = last - first;
        float step = delta / div;
        for (int i = 0; i < count; i++)
        {
            float v = step == 0 ? (float)i / div * delta : (float)i * step;
            y[i] = v + first;
        }
        y[count - 1] = last;
        return y;
    }

    /// <summary>
    /// <c>np.histogram(values, bins, range=(first, last))</c> for float32 data: float32 edges (NumPy 2 takes the edge
    /// type from the float32 range and data, and its <c>linspace</c> computes in that type; NumPy 1's computed in
    /// float64), an index by float32 division, then corrected by one bin against the edges; values outside the range
    /// are dropped. Several batches count as their concatenation.
    /// </summary>
    internal static (long[] Counts, float[] Edges) UniformHistogram(IReadOnlyList<FloatChunks> batches, int bins, float first, float last,
        bool absolute = false)
    {
        if (first == last)
        {
            first -= 0.5f;
            last += 0.5f;
        }
        float[] edges = Linspace(first, last, bins + 1);
        var counts = new long[bins];
        float denom = last - first;
        ForEachChunk(batches, (chunk, _) =>
        {
            foreach (float v in chunk)
            {
                float x = absolute ? MathF.Abs(v) : v;
                if (!(x >= first && x <= last)) continue;
                float f = (x - first) / denom * bins;
                long idx = (long)f;
                if (idx == bins) idx--;
                if (x < edges[idx]) idx--;
                if (x >= edges[idx + 1] && idx != bins - 1) idx++;
                counts[idx]++;
            }
        });
        return (counts, edges);
    }

    /// <summary><see cref="UniformHistogram(IReadOnlyList{FloatChunks}, int, float, float, bool)"/> of one array.</summary>
    internal static unsafe (long[] Counts, float[] Edges) UniformHistogram(float[] values, int bins, float first, float last, bool absolute = false)
    {
        fixed (float* p = values) return UniformHistogram([FloatChunks.Over(p, values.Length, [values.Length])], bins, first, last, absolute);
    }

    /// <summary>Calls <paramref name="visit"/> on every chunk of every batch, in order.</summary>
    private static void ForEachChunk(IReadOnlyList<FloatChunks> batches, FloatChunkAction visit)
    {
        foreach (var batch in batches) batch.ForEach(visit);
    }

    /// <summary><c>np.histogram(values, bins=edges)</c> (of |values| when <paramref name="absolute"/>): [e_i, e_i+1) per bin, the last bin closed.</summary>
    internal static long[] EdgesHistogram(IReadOnlyList<FloatChunks> batches, float[] edges, bool absolute = false)
    {
        int bins = edges.Length - 1;
        var counts = new long[bins];
        ForEachChunk(batches, (chunk, _) =>
        {
            foreach (float v in chunk)
            {
                float x = absolute ? MathF.Abs(v) : v;
                if (x < edges[0] || x > edges[^1]) continue;
                int lo = 0, hi = edges.Length;
                while (lo < hi)
                {
                    int mid = (lo + hi) >>> 1;
                    if (edges[mid] <= x) lo = mid + 1;
                    else hi = mid;
                }
                counts[Math.Min(lo - 1, bins - 1)]++;
            }
        });
        return counts;
    }
}
