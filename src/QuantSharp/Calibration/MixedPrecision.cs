using System.Globalization;

namespace QuantSharp.Calibration;

/// <summary>What a mixed-precision plan must meet: a size (bytes or bits per weight) or an output quality; give one.</summary>
public sealed record MixedPrecisionBudget
{
    /// <summary>At most this many bytes for the quantized layers (integer data, scales, zero points, biases).</summary>
    public long? MaxBytes { get; init; }

    /// <summary>At most this many bits per weight element on average (the quantized layers' bytes × 8 / their weight elements).</summary>
    public double? MaxBitsPerWeight { get; init; }

    /// <summary>The cheapest plan whose predicted model-output SQNR (dB) is at least this.</summary>
    public double? MinOutputSqnrDb { get; init; }

    /// <summary>The cheapest plan whose measured metric (e.g. accuracy) is at most this much below the float model's
    /// (needs an evaluation function and a report measured with a metric).</summary>
    public double? MaxMetricDrop { get; init; }

    /// <summary>A size budget in bytes.</summary>
    public static MixedPrecisionBudget Bytes(long maxBytes) => new() { MaxBytes = maxBytes };

    /// <summary>A size budget in average bits per weight.</summary>
    public static MixedPrecisionBudget BitsPerWeight(double bits) => new() { MaxBitsPerWeight = bits };

    /// <summary>A quality target: model-output SQNR in dB.</summary>
    public static MixedPrecisionBudget OutputSqnr(double db) => new() { MinOutputSqnrDb = db };

    /// <summary>A quality target: metric drop against the float model (e.g. 0.002 for 0.2 points of accuracy as a fraction).</summary>
    public static MixedPrecisionBudget MetricDrop(double drop) => new() { MaxMetricDrop = drop };

    internal bool IsSize => MaxBytes is not null || MaxBitsPerWeight is not null;

    internal void Validate()
    {
        int given = (MaxBytes is null ? 0 : 1) + (MaxBitsPerWeight is null ? 0 : 1) + (MinOutputSqnrDb is null ? 0 : 1) + (MaxMetricDrop is null ? 0 : 1);
        if (given != 1)
            throw new ArgumentException("Give exactly one budget: MaxBytes, MaxBitsPerWeight, MinOutputSqnrDb or MaxMetricDrop.");
        if (MaxMetricDrop is { } d && !(d >= 0)) throw new ArgumentException($"MaxMetricDrop must be at least 0, got {d}.");
        if (MaxBytes is <= 0) throw new ArgumentException($"MaxBytes must be positive, got {MaxBytes}.");
        if (MaxBitsPerWeight is { } b && !(b > 0)) throw new ArgumentException($"MaxBitsPerWeight must be positive, got {b}.");
        if (MinOutputSqnrDb is { } s && !double.IsFinite(s)) throw new ArgumentException($"MinOutputSqnrDb must be a finite number, got {s}.");
    }

    /// <inheritdoc/>
    public override string ToString() =>
        MaxBytes is { } m ? $"at most {m} bytes"
        : MaxBitsPerWeight is { } b ? $"at most {b.ToString("0.###", CultureInfo.InvariantCulture)} bits per weight"
        : MaxMetricDrop is { } d ? $"metric at most {d.ToString("0.####", CultureInfo.InvariantCulture)} below float"
        : $"output SQNR at least {MinOutputSqnrDb!.Value.ToString("0.##", CultureInfo.InvariantCulture)} dB";
}

/// <summary>The spec chosen for one layer.</summary>
/// <param name="Layer">Dotted layer name.</param>
/// <param name="Spec">The chosen spec (as measured: after any group-size fallback).</param>
/// <param name="Bytes">Bytes of the layer with that spec.</param>
/// <param name="OutputSqnrDb">Model-output SQNR (dB) measured with only this layer quantized that way.</param>
public sealed record MixedPrecisionChoice(string Layer, QuantSpec Spec, long Bytes, double OutputSqnrDb)
{
    /// <summary>The spec asked for (one of the report's specs); differs from <see cref="Spec"/> after a fallback.</summary>
    public QuantSpec? Requested { get; init; }

    /// <summary>Why <see cref="Spec"/> is not <see cref="Requested"/> (the quantizer's fallback message), or null. A layer
    /// that cannot take any of the requested types (e.g. 9 inputs per filter: no even length for 4-bit or 2-bit packing)
    /// lands on 8-bit this way, and the plan says so.</summary>
    public string? Fallback { get; init; }
}

/// <summary>
/// A per-layer precision plan from a <see cref="SensitivityReport"/> (<see cref="Plan"/>), expressed as a
/// <see cref="QuantizationRecipe"/> with one override per layer (save it, and use it with <c>Quantizer.Quantize</c> or
/// <c>quantsharp quantize --config</c>).
/// </summary>
/// <param name="Budget">The budget it was made for.</param>
/// <param name="Recipe">The recipe: the base recipe with one override per layer.</param>
/// <param name="Layers">The choice per layer, in model order.</param>
/// <param name="Bytes">Bytes of the quantized layers under the plan.</param>
/// <param name="BitsPerWeight">Bits per weight element of the plan.</param>
/// <param name="PredictedOutputSqnrDb">The plan's model-output SQNR predicted from the single-layer measurements,
/// assuming the layers' output noise powers add: <c>-10 log10(Σ 10^(-SQNR_i / 10))</c>. Measure the plan to know.</param>
/// <param name="Metric">The plan's metric from the evaluation function, or null when none was given.</param>
/// <param name="CandidatesEvaluated">How many plans of the upgrade path were evaluated (0 without an evaluation function).</param>
public sealed record MixedPrecisionPlan(MixedPrecisionBudget Budget, QuantizationRecipe Recipe, IReadOnlyList<MixedPrecisionChoice> Layers,
    long Bytes, double BitsPerWeight, double PredictedOutputSqnrDb, double? Metric, int CandidatesEvaluated)
{
    /// <summary>
    /// Chooses a spec per layer among the report's specs. Every layer starts at its smallest measured variant (the
    /// uniform lowest precision); then, step by step, the upgrade (one layer to a larger variant) that removes the most
    /// predicted output noise per added byte is taken, within the size budget if there is one. Each step is a plan; the
    /// path ends when no upgrade fits (or every layer is at its largest). The plan returned:
    /// <list type="bullet">
    /// <item>size budget: the last plan of the path (the most predicted output SQNR the budget buys), or with
    /// <paramref name="evaluate"/> the last plan of the path that scores at least as well as the first one (the uniform
    /// lowest precision), so the result is never worse than uniform lowest precision on the evaluation data;</item>
    /// <item>output SQNR: the first plan whose predicted SQNR reaches the target (else the last);</item>
    /// <item>metric drop: the first plan whose evaluated metric is within the drop of the float model's (else the last).</item>
    /// </list>
    /// Deterministic for a given report (and evaluation).
    /// </summary>
    /// <param name="report">Single-layer measurements (<see cref="SensitivityReport.Measure"/>).</param>
    /// <param name="budget">One of: bytes, bits per weight, output SQNR, metric drop.</param>
    /// <param name="evaluate">Scores a plan's recipe (e.g. quantize with it and measure accuracy; higher is better); null
    /// to plan from the report alone. Required for a metric-drop budget.</param>
    /// <exception cref="ArgumentException">Invalid budget, a size budget below the smallest plan (the message gives its
    /// size), or a metric-drop budget without an evaluation or a float metric.</exception>
    public static MixedPrecisionPlan Plan(SensitivityReport report, MixedPrecisionBudget budget, Func<QuantizationRecipe, double>? evaluate = null)
    {
        ArgumentNullException.ThrowIfNull(report);
        ArgumentNullException.ThrowIfNull(budget);
        budget.Validate();
        if (budget.MaxMetricDrop is not null && (evaluate is null || report.FloatMetric is null))
            throw new ArgumentException("A metric-drop budget needs an evaluation function and a sensitivity report measured with the same metric.", nameof(evaluate));
        var layers = report.Layers;
        long weights = layers.Sum(l => l.WeightElements);
        long? maxBytes = budget.MaxBytes ?? (budget.MaxBitsPerWeight is { } bpw ? (long)Math.Floor(bpw * weights / 8) : null);
        // Per layer, its variants by size (on equal size the better SQNR first: equal bytes give nothing to choose).
        var options = layers.Select(l => l.Measurements.OrderBy(m => m.Bytes).ThenByDescending(m => m.OutputSqnrDb).ToList()).ToList();
        var path = UpgradePath(options, maxBytes);
        long Bytes(int[] plan) => options.Select((o, i) => o[plan[i]].Bytes).Sum();
        double Predicted(int[] plan) => -10 * Math.Log10(options.Select((o, i) => Noise(o[plan[i]])).Sum());
        if (maxBytes is { } cap && Bytes(path[0]) > cap)
            throw new ArgumentException(
                $"The budget ({budget}) is below the smallest plan, {Bytes(path[0])} bytes " +
                $"({8.0 * Bytes(path[0]) / weights:0.###} bits per weight): every layer at its smallest measured spec. Raise the budget or measure a smaller spec.");

        QuantizationRecipe RecipeOf(int[] plan) => report.BaseRecipe with
        {
            Include = [],
            Overrides = layers.Select((l, i) => RecipeOverride.Of(l.Layer, options[i][plan[i]].Applied)).ToList(),
            Validation = new ValidationPolicy(),
        };
        int evaluated = 0;
        var scores = new Dictionary<int, double>();
        double Score(int step)
        {
            if (!scores.TryGetValue(step, out double v))
            {
                v = evaluate!(RecipeOf(path[step]));
                scores[step] = v;
                evaluated++;
            }
            return v;
        }

        int chosen = path.Count - 1;
        if (budget.MinOutputSqnrDb is { } target)
        {
            int first = path.FindIndex(p => Predicted(p) >= target);
            if (first >= 0) chosen = first;
        }
        else if (budget.MaxMetricDrop is { } drop)
        {
            double floor = report.FloatMetric!.Value - drop;
            for (int step = 0; step < path.Count; step++)
            {
                if (Score(step) < floor) continue;
                chosen = step;
                break;
            }
        }
        else if (evaluate is not null)
        {
            // The furthest plan of the path (most predicted SQNR) that scores at least as well as the first one.
            double floor = Score(0);
            while (chosen > 0 && Score(chosen) < floor) chosen--;
        }

        var plan = path[chosen];
        var choices = layers.Select((l, i) =>
        {
            var m = options[i][plan[i]];
            return new MixedPrecisionChoice(l.Layer, m.Applied, m.Bytes, m.OutputSqnrDb) { Requested = m.Spec, Fallback = m.Fallback };
        }).ToList();
        long bytes = Bytes(plan);
        return new MixedPrecisionPlan(budget, RecipeOf(plan), choices, bytes, 8.0 * bytes / weights, Predicted(plan),
            scores.TryGetValue(chosen, out double metric) ? metric : null, evaluated);
    }

    /// <summary>Relative output noise power of a measurement: 10^(-SQNR/10).</summary>
    private static double Noise(SensitivityMeasurement m) => Math.Pow(10, -m.OutputSqnrDb / 10);

    /// <summary>The greedy upgrade path: the smallest plan, then one best-noise-per-byte upgrade at a time within <paramref name="maxBytes"/>.</summary>
    private static List<int[]> UpgradePath(List<List<SensitivityMeasurement>> options, long? maxBytes)
    {
        var current = new int[options.Count];
        var path = new List<int[]> { (int[])current.Clone() };
        long bytes = options.Sum(o => o[0].Bytes);
        while (true)
        {
            int bestLayer = -1, bestOption = -1;
            double bestGain = 0;
            for (int i = 0; i < options.Count; i++)
            {
                var now = options[i][current[i]];
                for (int j = current[i] + 1; j < options[i].Count; j++)
                {
                    var next = options[i][j];
                    long extra = next.Bytes - now.Bytes;
                    double gain = Noise(now) - Noise(next);
                    if (gain <= 0 || maxBytes is { } cap && bytes + extra > cap) continue;
                    double perByte = gain / Math.Max(1, extra);
                    if (perByte > bestGain) (bestGain, bestLayer, bestOption) = (perByte, i, j);
                }
            }
            if (bestLayer < 0) return path;
            bytes += options[bestLayer][bestOption].Bytes - options[bestLayer][current[bestLayer]].Bytes;
            current[bestLayer] = bestOption;
            path.Add((int[])current.Clone());
        }
    }
}
