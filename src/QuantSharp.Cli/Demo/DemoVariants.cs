using QuantSharp.Calibration;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Cli.Demo;

/// <summary>The quantized variants the demo compares with float32, built with <see cref="Quantizer.Quantize"/>.</summary>
internal static class DemoVariants
{
    /// <summary>Calibration batch size (images per forward pass).</summary>
    private const int CalibrationBatch = 64;

    private const string Int8Description = "int8 symmetric weights, one scale per output channel, all four layers";

    private const string Int4Description = "int4 symmetric weights in groups of 32 (fc1, fc2); conv2 groups of 16 (144 inputs per filter); " +
                                           "conv1 int8 per-channel (9 inputs per filter)";

    private static readonly QuantizationRecipe Int4Group32 = QuantizationRecipe.Int4WeightOnly(groupSize: 32) with
    {
        Overrides = [new("conv1", QuantType.Int8), new("conv2", Granularity: new PerGroup(16))],
    };

    /// <summary>float16, int8 per-channel, int4 group-32, W8A8 (calibrated) and dynamic W8A8, in that order.</summary>
    public static IReadOnlyList<DemoVariant> All { get; } =
    [
        new("float16", "float16 weights, all four layers",
            (model, _, _) => Quantize(model, QuantizationRecipe.Float16(), null, null)),
        new("int8-per-channel", Int8Description, (model, _, _) => Quantize(model, QuantizationRecipe.Int8WeightOnly(), null, null)),
        new("int4-group32", Int4Description, (model, _, _) => Quantize(model, Int4Group32, null, null)),
        new("w8a8", "int8 per-channel weights + uint8 affine per-tensor inputs of every layer, min/max calibrated",
            (model, calibration, progress) => Quantize(model, QuantizationRecipe.Int8Static() with { CalibrationSamples = (int)calibration.shape[0] },
                Batches(calibration), progress)),
        new("w8a8-dynamic", "int8 per-channel weights + int8 inputs of the Linear layers quantized per row on each call (no calibration); convolutions int8 weight-only",
            (model, _, _) => Quantize(model, QuantizationRecipe.Int8Dynamic(), null, null)),
    ];

    /// <summary>
    /// The variants for a weight method: <see cref="All"/> for round to nearest; with GPTQ the int8 and int4 variants are
    /// rounded by GPTQ on the calibration images (recipe <c>"method": "gptq"</c>; named <c>*-gptq</c>), the others are kept.
    /// </summary>
    public static IReadOnlyList<DemoVariant> ForMethod(QuantizationMethod method) => method == QuantizationMethod.RoundToNearest ? All :
    [
        All[0],
        Gptq("int8-per-channel-gptq", Int8Description, QuantizationRecipe.Int8WeightOnly()),
        Gptq("int4-group32-gptq", Int4Description, Int4Group32),
        .. All.Skip(3),
    ];

    /// <summary>A variant quantized with <paramref name="recipe"/> (e.g. a file of <c>calibrate compare --save-recipe</c>), calibrated
    /// on the demo's calibration images when the recipe calibrates (static activations, GPTQ).</summary>
    public static DemoVariant FromRecipe(string name, QuantizationRecipe recipe, string source) =>
        new(name, $"the recipe {source}", (model, calibration, progress) => Quantize(model, recipe, Batches(calibration), progress));

    private static DemoVariant Gptq(string name, string description, QuantizationRecipe recipe) =>
        new(name, description + "; rounded by GPTQ on the calibration images",
            (model, calibration, progress) => Quantize(model, recipe with { Method = QuantizationMethod.Gptq, CalibrationSamples = (int)calibration.shape[0] },
                Batches(calibration), progress));

    private static IEnumerable<Tensor> Batches(Tensor images)
    {
        for (long start = 0; start < images.shape[0]; start += CalibrationBatch)
            yield return images.narrow(0, start, Math.Min(CalibrationBatch, images.shape[0] - start));
    }

    private static DemoBuilt Quantize(MnistNet model, QuantizationRecipe recipe, IEnumerable<Tensor>? calibration,
        IProgress<CalibrationProgress>? progress)
    {
        var result = Quantizer.Quantize(model, recipe, factory: () => new MnistNet(), calibrationData: calibration,
            onFailure: ValidationFailureMode.Warn, progress: progress);
        if (result.Skipped.Count > 0)
        {
            result.Model.Dispose();
            throw new InvalidOperationException("The demo expects every layer to be quantized; skipped: " +
                string.Join("; ", result.Skipped.Select(s => $"{s.Name}: {s.Reason}")));
        }
        double? minWeightSqnr = result.Report is { Layers.Count: > 0 } r ? r.Layers.Min(l => l.WeightSqnrDb) : null;
        return new DemoBuilt(result.Model, result.Recipe, minWeightSqnr, result.Warnings);
    }
}
