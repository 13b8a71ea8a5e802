namespace QuantSharp.Observers;

/// <summary>
/// PyTorch's <c>HistogramObserver</c> (torch/ao/quantization/observer.py) reimplemented: a running histogram over
/// [min, max] built with <c>torch.histc</c>'s float32 arithmetic, re-binned on a 16x finer grid when the range grows
/// (<c>_combine_histograms</c> / <c>_upscale_histogram</c>), and the L2-error search of
/// <c>_non_linear_param_search</c> for the clipping range.
/// </summary>
internal sealed class TorchHistogram
{
    /// <summary>PyTorch's <c>upsample_rate</c>.</summary>
    private const int UpsampleRate = 16;

    /// <summary>libtorch's <c>at::internal::GRAIN_SIZE</c>: linspace of at least this many points runs in chunks.</summary>
    private const int GrainSize = 32768;

    private readonly int _bins;
    private readonly int _dstBins;
    private float[]? _hist;
    private float _min, _max;

    /// <param name="bins">Histogram bins (PyTorch's default 2048).</param>
    /// <param name="dstBins">Quantization levels the search assumes (PyTorch: 2^bits of the dtype, 256 for 8-bit).</param>
    public TorchHistogram(int bins, int dstBins)
    {
        _bins = bins;
        _dstBins = dstBins;
    }

    /// <summary>
    /// Float lanes of libtorch's vectorised linspace (8 for AVX2, 16 for AVX-512) and the threads it splits a
    /// linspace of at least <see cref="GrainSize"/> points over. Only the last bits of the sub-bin midpoints depend
    /// on them; on the reference data 1, 8 or 16 lanes and 1 or 2 threads all give PyTorch's scales bit for bit.
    /// </summary>
    private const int LinspaceLanes = 8, LinspaceThreads = 2;

    public bool IsEmpty => _hist is null;
    public float Min => _min;
    public float Max => _max;
    public float[] Histogram => _hist ?? throw new InvalidOperationException("Nothing observed.");

    public void Reset() => _hist = null;

    /// <summary>Folds one batch of values in.</summary>
    public unsafe void Observe(ReadOnlySpan<float> values)
    {
        fixed (float* p = values) Observe(FloatChunks.Over(p, values.Length, [values.Length]));
    }

    /// <summary>Folds one tensor in: its range first, then its histogram (two passes over the chunks).</summary>
    public void Observe(FloatChunks values)
    {
        var (xMin, xMax) = Range(values);
        if (_hist is null)
        {
            (_min, _max) = (xMin, xMax);
            _hist = Histc(values, _bins, xMin, xMax);
            return;
        }
        float newMin = MathF.Min(_min, xMin), newMax = MathF.Max(_max, xMax);
        float[] update = Histc(values, _bins, newMin, newMax);
        if (newMin == _min && newMax == _max)
        {
            for (int i = 0; i < _bins; i++) _hist[i] += update[i];
            return;
        }
        _hist = Combine(_hist, _min, _max, update, newMin, newMax);
        (_min, _max) = (newMin, newMax);
    }

    /// <summary><c>torch.histc(x, bins, min, max)</c> on float32 data (linear bin index, no edge correction).</summary>
    internal static unsafe float[] Histc(ReadOnlySpan<float> values, int bins, float min, float max)
    {
        fixed (float* p = values) return Histc(FloatChunks.Over(p, values.Length, [values.Length]), bins, min, max);
    }

    /// <summary><c>torch.histc</c> over chunked values: the counts are added in element order, as over one span.</summary>
    internal static float[] Histc(FloatChunks values, int bins, float min, float max)
    {
        double left = min, right = max;
        if (left == right && values.Count > 0)
        {
            var (lo, hi) = Range(values);
            (left, right) = (lo, hi);
        }
        if (left == right)
        {
            left -= 1;
            right += 1;
        }
        float l = (float)left, r = (float)right;
        float width = r - l;
        var hist = new float[bins];
        values.ForEach((chunk, _) =>
        {
            foreach (float x in chunk)
            {
                if (!(x >= l && x <= r)) continue;
                long pos = (long)((x - l) * (float)bins / width);
                if (pos == bins) pos--;
                hist[pos] += 1f;
            }
        });
        return hist;
    }

    /// <summary>The smallest and largest value (by <c>&lt;</c> and <c>&gt;</c>, as torch.aminmax on finite data).</summary>
    private static (float Min, float Max) Range(FloatChunks values)
    {
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        values.ForEach((chunk, _) =>
        {
            foreach (float v in chunk)
            {
                if (v < min) min = v;
                if (v > max) max = v;
            }
        });
        return (min, max);
    }

    private float[] Combine(float[] orig, float origMin, float origMax, float[] update, float updateMin, float updateMax)
    {
        var result = new float[_bins];
        if (origMin == origMax)
        {
            float total = 0f;
            foreach (float c in orig) total += c;
            float[] one = Histc([origMin], _bins, updateMin, updateMax);
            for (int i = 0; i < _bins; i++) result[i] = one[i] * total + update[i];
            return result;
        }
        // Upscale: spread each old bin evenly over 16 sub-bins, and move each sub-bin's midpoint into the new bins.
        int fine = _bins * UpsampleRate;
        float binSize = (origMax - origMin) / fine;
        float half = 0.5f * binSize;
        float[] mids = TorchLinspace(origMin, origMax, fine + 1);
        float[] bounds = TorchLinspace(updateMin, updateMax, _bins + 1);
        var moved = new float[_bins];
        for (int j = 0; j < fine; j++)
        {
            float mid = mids[j] + half;
            int lo = 0, hi = bounds.Length;
            while (lo < hi)
            {
                int m = (lo + hi) >>> 1;
                if (bounds[m] <= mid) lo = m + 1;
                else hi = m;
            }
            int bucket = Math.Clamp(lo - 1, 0, _bins - 1);
            moved[bucket] += orig[j / UpsampleRate] / UpsampleRate;
        }
        for (int i = 0; i < _bins; i++) result[i] = update[i] + moved[i];
        return result;
    }

    /// <summary>
    /// <c>torch.linspace(start, end, steps)</c> in float32 as libtorch's CPU kernel computes it: the first half from
    /// the start, the second half back from the end, in vector lanes of base + k * step.
    /// </summary>
    internal static float[] TorchLinspace(float start, float end, int steps)
    {
        var y = new float[steps];
        if (steps == 1)
        {
            y[0] = start;
            return y;
        }
        float step = (end - start) / (steps - 1);
        int halfway = steps / 2;
        int tasks = steps < GrainSize ? 1 : Math.Min(LinspaceThreads, (steps + GrainSize - 1) / GrainSize);
        int chunk = (steps + tasks - 1) / tasks;
        int lanes = LinspaceLanes;
        for (int begin = 0; begin < steps; begin += chunk)
        {
            int stop = Math.Min(steps, begin + chunk);
            int n = stop - begin;
            int idx = begin;
            int i = 0;
            for (; i <= n - 2 * lanes; i += 2 * lanes)
            {
                for (int v = 0; v < 2; v++)
                {
                    float b = idx < halfway ? start + step * idx : end - step * (steps - idx - 1);
                    for (int k = 0; k < lanes; k++) y[idx + k] = k == 0 ? b : b + k * step;
                    idx += lanes;
                }
            }
            for (; idx < stop; idx++)
                y[idx] = idx < halfway ? start + step * idx : end - step * (steps - idx - 1);
        }
        return y;
    }

    /// <summary>
    /// PyTorch's <c>_non_linear_param_search</c>: narrows [start_bin, end_bin] from both ends in quantile steps
    /// of 1e-5 while the L2 quantization error keeps falling; returns the range in float32 as PyTorch does.
    /// </summary>
    public (float Min, float Max) L2Search()
    {
        float[] hist = Histogram;
        if (_min == _max) return (_min, _max);
        float binWidth = (_max - _min) / _bins;
        double total = 0;
        var cSum = new float[_bins];
        float acc = 0f;
        for (int i = 0; i < _bins; i++)
        {
            acc += hist[i];
            cSum[i] = acc;
            total += hist[i];
        }
        total = acc;

        const double stepSize = 1e-5;
        double alpha = 0.0, beta = 1.0;
        int startBin = 0, endBin = _bins - 1;
        double normMin = double.PositiveInfinity;
        while (alpha < beta)
        {
            double nextAlpha = alpha + stepSize;
            double nextBeta = beta - stepSize;
            // torch compares the float32 cumulative sums with the bound cast to float32.
            float lowBound = (float)(nextAlpha * total), highBound = (float)(nextBeta * total);
            int l = startBin, r = endBin;
            while (l < endBin && cSum[l] < lowBound) l++;
            while (r > startBin && cSum[r] > highBound) r--;

            int nextStart = startBin, nextEnd = endBin;
            if (l - startBin > endBin - r)
            {
                nextStart = l;
                alpha = nextAlpha;
            }
            else
            {
                nextEnd = r;
                beta = nextBeta;
            }
            if (nextStart == startBin && nextEnd == endBin) continue;

            double norm = QuantizationError(hist, nextStart, nextEnd);
            if (norm > normMin) break;
            normMin = norm;
            startBin = nextStart;
            endBin = nextEnd;
        }
        float newMin = _min + binWidth * startBin;
        float newMax = _min + binWidth * (endBin + 1);
        return (newMin, newMax);
    }

    /// <summary>PyTorch's <c>_compute_quantization_error</c>, element arithmetic in float32 as torch does.</summary>
    private double QuantizationError(float[] hist, int nextStart, int nextEnd)
    {
        double binWidthD = ((double)_max - _min) / _bins;
        double dstBinWidthD = binWidthD * (nextEnd - nextStart + 1) / _dstBins;
        if (dstBinWidthD == 0.0) return 0.0;
        float binWidth = (float)binWidthD;
        float dst = (float)dstBinWidthD;
        float half = (float)(dstBinWidthD / 2);
        float negHalf = (float)(-dstBinWidthD / 2);
        float fullCube = (half * half * half - negHalf * negHalf * negHalf) / 3f;
        float maxDst = _dstBins - 1;
        double sum = 0;
        for (int i = 0; i < _bins; i++)
        {
            float srcBegin = (float)(i - nextStart) * binWidth;
            float srcEnd = srcBegin + binWidth;
            float dstOfBegin = Math.Clamp(FloorDivide(srcBegin, dst), 0f, maxDst);
            float dstOfBeginCenter = (dstOfBegin + 0.5f) * dst;
            float dstOfEnd = Math.Clamp(FloorDivide(srcEnd, dst), 0f, maxDst);
            float density = hist[i] / binWidth;

            float deltaBegin = srcBegin - dstOfBeginCenter;
            float norm = density * ((half * half * half - deltaBegin * deltaBegin * deltaBegin) / 3f);
            norm += (dstOfEnd - dstOfBegin - 1f) * (density * fullCube);
            float dstOfEndCenter = dstOfEnd * dst + half;
            float deltaEnd = srcEnd - dstOfEndCenter;
            norm += density * ((deltaEnd * deltaEnd * deltaEnd - negHalf * negHalf * negHalf) / 3f);
            sum += norm;
        }
        return sum;
    }

    /// <summary>torch's floor division of float32 values (<c>c10::div_floor_floating</c>): NumPy's rule, with
    /// a / b for a zero divisor.</summary>
    private static float FloorDivide(float a, float b) => b == 0 ? a / b : OrtHistogram.FloorDivide(a, b);
}
