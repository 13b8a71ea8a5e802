using QuantSharp.Calibration;
using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Cli.Demo;

/// <summary>Which MNIST images the demo evaluates on.</summary>
internal enum DemoDataChoice
{
    /// <summary>The full test set when <c>.cache/mnist</c> is present, else the bundled slice.</summary>
    Auto,

    /// <summary>The full 10,000-image test set from <c>.cache/mnist</c> (scripts/fetch-mnist.sh); calibration on training images.</summary>
    Full,

    /// <summary>The first 1,000 test images bundled with the CLI; calibration on the first images of that slice.</summary>
    Bundled,
}

/// <summary>Options of one demo run.</summary>
internal sealed record DemoOptions
{
    /// <summary>Data to evaluate on.</summary>
    public DemoDataChoice Data { get; init; } = DemoDataChoice.Auto;

    /// <summary>Folder with the four MNIST IDX files; null = look for <c>.cache/mnist</c> from the current directory upwards.</summary>
    public string? MnistDirectory { get; init; }

    /// <summary>Float32 model (safetensors); null = the bundled <c>Assets/mnist-cnn.safetensors</c>.</summary>
    public string? ModelPath { get; init; }

    /// <summary>Number of images used to calibrate activations (W8A8).</summary>
    public int CalibrationImages { get; init; } = 256;

    /// <summary>Evaluate on at most this many images (null = all).</summary>
    public int? Limit { get; init; }

    /// <summary>Receives calibration progress (the CLI draws a bar above 50 samples); null for none.</summary>
    public IProgress<CalibrationProgress>? CalibrationProgress { get; init; }

    /// <summary>Folder to write each variant to (<c>NAME.safetensors</c> through <see cref="Quantizer.Save"/> and
    /// <c>NAME.recipe.json</c>); null: nothing is written.</summary>
    public string? SaveDirectory { get; init; }

    /// <summary>Stops the run between steps (the CLI's Ctrl+C): <see cref="DemoRunner.Run"/> then throws <see cref="DemoInterruptedException"/>.</summary>
    public CancellationToken Cancellation { get; init; }
}

/// <summary>The demo was cancelled (<see cref="DemoOptions.Cancellation"/>) between two steps, never inside a file write.</summary>
/// <param name="saved">The files already written under <see cref="DemoOptions.SaveDirectory"/>, each complete.</param>
internal sealed class DemoInterruptedException(IReadOnlyList<string> saved) : OperationCanceledException("The demo was interrupted.")
{
    /// <summary>The files written before the interruption (complete; kept).</summary>
    public IReadOnlyList<string> Saved { get; } = saved;
}

/// <summary>One row of the demo's result.</summary>
/// <param name="Name">Variant name (float32, float16, int8-per-channel, int4-group32, w8a8).</param>
/// <param name="Description">What was quantized and how.</param>
/// <param name="Correct">Correctly classified images.</param>
/// <param name="Total">Evaluated images.</param>
/// <param name="SizeBytes">Bytes of the model's parameters and buffers (each storage once).</param>
/// <param name="Float32Bytes">Bytes of the float32 model, for the ratio.</param>
/// <param name="SqnrDb">SQNR in dB of the variant's logits against the float32 model's on the evaluated images (null for float32).</param>
/// <param name="MinWeightSqnrDb">Lowest per-layer weight SQNR (dB) reported by the quantizer (null for float32).</param>
/// <param name="Seconds">Time to build and evaluate the variant.</param>
/// <param name="Warnings">Validation warnings of the quantizer.</param>
/// <param name="InferenceMs">Wall time of an evaluation pass (all evaluated images, batches of 500, no gradients): the minimum of <see cref="DemoRunner.TimingRounds"/> rounds (3 beyond 2,000 images) interleaved over the variants.</param>
internal sealed record DemoVariantResult(string Name, string Description, int Correct, int Total, long SizeBytes,
    long Float32Bytes, double? SqnrDb, double? MinWeightSqnrDb, double Seconds, IReadOnlyList<string> Warnings, double InferenceMs)
{
    /// <summary>Accuracy in percent.</summary>
    public double AccuracyPercent => 100.0 * Correct / Total;

    /// <summary>Size relative to float32 (e.g. 0.25 for int8 weights).</summary>
    public double SizeRatio => (double)SizeBytes / Float32Bytes;
}

/// <summary>The result of a demo run.</summary>
internal sealed record DemoReport(string Data, string EvaluationSource, int EvaluationImages, string CalibrationSource,
    int CalibrationImages, string ModelPath, IReadOnlyList<DemoVariantResult> Variants);

/// <summary>A quantized variant of the demo model: how to build it from the float model.</summary>
/// <param name="Name">Short name.</param>
/// <param name="Description">What it does.</param>
/// <param name="Build">Builds the variant from the float model (must not modify it), the calibration images and a
/// calibration progress receiver (may be null).</param>
internal sealed record DemoVariant(string Name, string Description, Func<MnistNet, Tensor, IProgress<CalibrationProgress>?, DemoBuilt> Build);

/// <summary>A built variant.</summary>
/// <param name="Model">The quantized model (the demo disposes it).</param>
/// <param name="Recipe">The recipe it was quantized with.</param>
/// <param name="MinWeightSqnrDb">Lowest per-layer weight SQNR of the quantizer's validation report, if any.</param>
/// <param name="Warnings">Validation warnings of the quantizer.</param>
internal sealed record DemoBuilt(Module<Tensor, Tensor> Model, QuantizationRecipe Recipe, double? MinWeightSqnrDb, IReadOnlyList<string> Warnings);

/// <summary>Loads the demo model and data, builds each variant, evaluates it.</summary>
internal static class DemoRunner
{
    /// <summary>Folder of the bundled assets (next to the CLI assembly).</summary>
    public static string AssetsDirectory => Path.Combine(AppContext.BaseDirectory, "Assets");

    /// <summary>The bundled float32 model.</summary>
    public static string BundledModelPath => Path.Combine(AssetsDirectory, "mnist-cnn.safetensors");

    /// <summary>The bundled first 1,000 MNIST test images (IDX).</summary>
    public static string BundledImagesPath => Path.Combine(AssetsDirectory, "mnist-t10k-first1000-images-idx3-ubyte");

    /// <summary>The bundled first 1,000 MNIST test labels (IDX).</summary>
    public static string BundledLabelsPath => Path.Combine(AssetsDirectory, "mnist-t10k-first1000-labels-idx1-ubyte");

    /// <summary>Loads the bundled slice of the test set.</summary>
    public static MnistSet LoadBundled(int maxItems = int.MaxValue) => MnistSet.Load(BundledImagesPath, BundledLabelsPath, maxItems);

    /// <summary>Finds <c>.cache/mnist</c> (with the test files) in the current directory or a parent; null when absent.</summary>
    public static string? FindMnistCache()
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, ".cache", "mnist");
            if (File.Exists(Path.Combine(candidate, "t10k-images-idx3-ubyte"))) return candidate;
        }
        return null;
    }

    /// <summary>Runs the demo: evaluates float32 and every variant on the chosen data.</summary>
    public static DemoReport Run(DemoOptions options, IReadOnlyList<DemoVariant> variants, Action<string>? progress = null)
    {
        if (options.CalibrationImages <= 0)
            throw new ArgumentException($"--calibration-images must be positive, got {options.CalibrationImages}.");
        if (options.Limit is <= 0)
            throw new ArgumentException($"--limit must be positive, got {options.Limit}.");
        string? cache = options.MnistDirectory ?? FindMnistCache();
        bool full = options.Data switch
        {
            DemoDataChoice.Full => true,
            DemoDataChoice.Bundled => false,
            _ => cache is not null && File.Exists(Path.Combine(cache, "t10k-images-idx3-ubyte")),
        };
        if (full && (cache is null || !File.Exists(Path.Combine(cache, "t10k-images-idx3-ubyte"))))
            throw new FileNotFoundException(
                $"--data full needs the MNIST files in {(cache ?? ".cache/mnist")}; run scripts/fetch-mnist.sh from the repository root " +
                "(or pass --mnist-dir DIR, or use --data bundled).");
        string modelPath = options.ModelPath ?? BundledModelPath;
        int limit = options.Limit ?? int.MaxValue;

        MnistSet eval, calibration;
        if (full)
        {
            eval = MnistSet.Load(Path.Combine(cache!, "t10k-images-idx3-ubyte"), Path.Combine(cache!, "t10k-labels-idx1-ubyte"), limit);
            // Calibrate on training images: never on the images we evaluate on.
            calibration = MnistSet.Load(Path.Combine(cache!, "train-images-idx3-ubyte"), Path.Combine(cache!, "train-labels-idx1-ubyte"),
                options.CalibrationImages);
        }
        else
        {
            // Only 1,000 bundled images: calibrate on the first ones of the slice (which are also evaluated).
            eval = LoadBundled(limit);
            calibration = LoadBundled(Math.Min(options.CalibrationImages, eval.Count));
        }

        using (eval)
        using (calibration)
        using (var model = MnistNet.Load(modelPath))
        {
            string evalSource = full
                ? $"MNIST test set ({eval.Count} images from {cache})"
                : $"bundled slice of the MNIST test set (first {eval.Count} images)";
            string calSource = full
                ? $"first {calibration.Count} MNIST training images"
                : $"first {calibration.Count} images of the bundled test slice";
            progress?.Invoke($"Model {modelPath}; evaluating on {evalSource}; calibrating on {calSource}.");

            var clock = Stopwatch.StartNew();
            using var floatLogits = Logits(model, eval);
            long floatBytes = ModelBytes(model);
            var results = new List<DemoVariantResult>
            {
                new("float32", "the trained model, unchanged", Correct(floatLogits, eval.Labels), eval.Count, floatBytes, floatBytes, null, null,
                    clock.Elapsed.TotalSeconds, [], 0),
            };
            // Every model is kept for the timing rounds at the end (the MNIST CNN is small).
            var timed = new List<Module<Tensor, Tensor>> { model };
            progress?.Invoke($"float32: {results[0].AccuracyPercent:F2}%");
            var saved = new List<string>();
            void StopIfInterrupted()
            {
                if (options.Cancellation.IsCancellationRequested) throw new DemoInterruptedException(saved);
            }
            var owned = new List<IDisposable>();
            try
            {
                foreach (var variant in variants)
                {
                    StopIfInterrupted();
                    clock.Restart();
                    var built = variant.Build(model, calibration.Images, options.CalibrationProgress);
                    var quantized = built.Model;
                    owned.Add(quantized);
                    quantized.eval();
                    StopIfInterrupted();
                    if (options.SaveDirectory is { } dir)
                    {
                        // The one file form, written through Quantizer.Save, with the recipe that made it (for quantsharp quantize --config).
                        Directory.CreateDirectory(dir);
                        string file = Path.Combine(dir, variant.Name + ".safetensors"), recipe = Path.Combine(dir, variant.Name + ".recipe.json");
                        Quantizer.Save(quantized, file);
                        saved.Add(file);
                        built.Recipe.Save(recipe);
                        saved.Add(recipe);
                        progress?.Invoke($"{variant.Name}: saved {file} and {variant.Name}.recipe.json");
                    }
                    using var logits = Logits(quantized, eval);
                    var r = new DemoVariantResult(variant.Name, variant.Description, Correct(logits, eval.Labels), eval.Count,
                        ModelBytes(quantized), floatBytes, Sqnr(floatLogits, logits), built.MinWeightSqnrDb, clock.Elapsed.TotalSeconds,
                        built.Warnings, 0);
                    results.Add(r);
                    timed.Add(quantized);
                    progress?.Invoke($"{r.Name}: {r.AccuracyPercent:F2}%");
                }
                StopIfInterrupted();
                double[] ms = InferenceTimes(timed, eval);
                for (int i = 0; i < results.Count; i++) results[i] = results[i] with { InferenceMs = ms[i] };
            }
            finally
            {
                foreach (var m in owned) m.Dispose();
            }
            return new DemoReport(full ? "full" : "bundled", evalSource, eval.Count, calSource, calibration.Count, modelPath, results);
        }
    }

    /// <summary>Logits [N, 10] of a model on a set, computed in batches without gradients.</summary>
    public static Tensor Logits(Module<Tensor, Tensor> model, MnistSet set, int batchSize = 500)
    {
        using var _ = no_grad();
        var parts = new List<Tensor>();
        try
        {
            for (int start = 0; start < set.Count; start += batchSize)
            {
                using var scope = NewDisposeScope();
                int n = Math.Min(batchSize, set.Count - start);
                parts.Add(model.call(set.Images.narrow(0, start, n)).to_type(ScalarType.Float32).MoveToOuterDisposeScope());
            }
            return cat(parts, 0);
        }
        finally
        {
            foreach (var p in parts) p.Dispose();
        }
    }

    /// <summary>
    /// Timing rounds over the models (in each, one evaluation pass per model in turn) for the bundled 1,000 images:
    /// with 3, the same build's W8A8-dynamic pass measured 40.7-44.5 ms in four demo runs (float32 39.0-42.8), with 7
    /// 36.3-40.6 (float32 39.7-41.5). Larger sets (<c>--full</c>: 10,000 images, passes ten times longer) take
    /// <see cref="LargeSetTimingRounds"/>.
    /// </summary>
    internal const int TimingRounds = 7;

    /// <summary>Timing rounds when the evaluation set has more than 2,000 images.</summary>
    internal const int LargeSetTimingRounds = 3;

    /// <summary>
    /// Each model's evaluation wall time in milliseconds: the minimum over <see cref="TimingRounds"/> (or <see cref="LargeSetTimingRounds"/>) rounds that pass
    /// over every model in turn (each was already run once to compute its accuracy, which warmed it up). One pass per
    /// model, timed as it came, varied by up to 3x between runs of the demo on a 2-core VM (float32 78-243 ms for the
    /// bundled 1,000 images), mostly with the order in which the models ran; interleaved rounds give every model the
    /// same conditions.
    /// </summary>
    private static double[] InferenceTimes(IReadOnlyList<Module<Tensor, Tensor>> models, MnistSet set)
    {
        var best = Enumerable.Repeat(double.MaxValue, models.Count).ToArray();
        int rounds = set.Count > 2000 ? LargeSetTimingRounds : TimingRounds;
        for (int round = 0; round < rounds; round++)
        {
            for (int i = 0; i < models.Count; i++)
            {
                long start = Stopwatch.GetTimestamp();
                Logits(models[i], set).Dispose();
                best[i] = Math.Min(best[i], Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
        }
        return best;
    }

    /// <summary>Number of rows whose arg-max equals the label.</summary>
    public static int Correct(Tensor logits, Tensor labels)
    {
        using var scope = NewDisposeScope();
        return (int)logits.argmax(1).eq(labels).sum().item<long>();
    }

    /// <summary>SQNR in dB, 20·log10(‖reference‖ / ‖reference − other‖) (as torch.ao.ns.fx.utils.compute_sqnr); +∞ when equal.</summary>
    public static double Sqnr(Tensor reference, Tensor other)
    {
        using var scope = NewDisposeScope();
        double signal = reference.to_type(ScalarType.Float64).norm().item<double>();
        double noise = (reference.to_type(ScalarType.Float64) - other.to_type(ScalarType.Float64)).norm().item<double>();
        return noise == 0 ? double.PositiveInfinity : 20 * Math.Log10(signal / noise);
    }

    /// <summary>Bytes held by a module's parameters and buffers, each storage counted once.</summary>
    public static long ModelBytes(Module module)
    {
        var seen = new HashSet<IntPtr>();
        long total = 0;
        foreach (var t in module.parameters().Concat(module.buffers()))
        {
            if (t.numel() == 0) continue;
            if (!seen.Add(t.storage<byte>().data_ptr())) continue;
            total += t.numel() * t.element_size();
        }
        return total;
    }
}
