using QuantSharp.Calibration;
using QuantSharp.Cli.Demo;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Cli.Calibrate;

/// <summary>Where the calibration commands take their model and images from (the demo's MNIST CNN by default).</summary>
/// <param name="Data"><c>auto</c>, <c>bundled</c> or <c>full</c>, as <c>quantsharp demo --data</c>.</param>
/// <param name="MnistDirectory">Folder with the four IDX files (MNIST or Fashion-MNIST); null: <c>.cache/mnist</c> upwards.</param>
/// <param name="ModelPath">MnistNet float32 weights; null: the bundled model.</param>
/// <param name="Samples">Calibration images, drawn with <paramref name="Seed"/>.</param>
/// <param name="Seed">Seed of the image draw (the results depend on nothing else).</param>
/// <param name="MetricImages">Images the accuracy metric uses with full data (drawn after the calibration images).</param>
internal sealed record CalibrationInputs(string Data = "auto", string? MnistDirectory = null, string? ModelPath = null, int Samples = 256,
    int Seed = 1, int MetricImages = 2000);

/// <summary>The loaded model and image sets of one calibration command.</summary>
internal sealed class CalibrationSetup : IDisposable
{
    private CalibrationSetup(MnistNet model, MnistSet calibration, MnistSet metric, MnistSet evaluation, string description)
    {
        Model = model;
        Calibration = calibration;
        Metric = metric;
        Evaluation = evaluation;
        Description = description;
    }

    /// <summary>The float model.</summary>
    public MnistNet Model { get; }

    /// <summary>Calibration images (the observers' and sensitivity's data).</summary>
    public MnistSet Calibration { get; }

    /// <summary>Images the accuracy metric of the sensitivity and of the plan choice is measured on.</summary>
    public MnistSet Metric { get; }

    /// <summary>Held-out images the final results are measured on (the test split; the bundled slice is all there is offline).</summary>
    public MnistSet Evaluation { get; }

    /// <summary>One line saying which data is used for what.</summary>
    public string Description { get; }

    /// <summary>The calibration images as batches of 64.</summary>
    public List<CalibrationBatch> Batches()
    {
        var list = new List<CalibrationBatch>();
        for (int start = 0; start < Calibration.Count; start += 64)
            list.Add(CalibrationBatch.Of(Calibration.ImagesSlice(start, Math.Min(64, Calibration.Count - start))));
        return list;
    }

    /// <summary>Loads the model and draws the images.</summary>
    /// <exception cref="ArgumentException">Bad counts.</exception>
    /// <exception cref="FileNotFoundException">Full data without the IDX files.</exception>
    public static CalibrationSetup Load(CalibrationInputs inputs)
    {
        if (inputs.Samples <= 0) throw new ArgumentException($"--samples must be positive, got {inputs.Samples}.");
        if (inputs.MetricImages <= 0) throw new ArgumentException($"--metric-images must be positive, got {inputs.MetricImages}.");
        string? cache = inputs.MnistDirectory ?? DemoRunner.FindMnistCache();
        bool hasFull = cache is not null && File.Exists(Path.Combine(cache, "t10k-images-idx3-ubyte"));
        bool full = inputs.Data.ToLowerInvariant() switch
        {
            "full" => hasFull ? true : throw new FileNotFoundException(
                $"--data full needs the IDX files in {cache ?? ".cache/mnist"}; run scripts/fetch-mnist.sh (or scripts/fetch-fashion-mnist.sh " +
                "and pass --mnist-dir .cache/fashion-mnist), or use --data bundled."),
            "bundled" => false,
            "auto" => hasFull,
            _ => throw new ArgumentException($"Unknown --data '{inputs.Data}'. Use auto, full or bundled."),
        };
        var model = MnistNet.Load(inputs.ModelPath ?? DemoRunner.BundledModelPath);
        try
        {
            if (!full)
            {
                var all = DemoRunner.LoadBundled();
                if (inputs.Samples > all.Count)
                    throw new ArgumentException($"--samples {inputs.Samples} exceeds the {all.Count} bundled images; use at most {all.Count} or --data full.");
                var order = Permutation(all.Count, inputs.Seed);
                var calibration = all.Subset(order[..inputs.Samples]);
                return new CalibrationSetup(model, calibration, all, all,
                    $"bundled slice of the MNIST test set ({all.Count} images): calibration on {inputs.Samples} drawn with seed {inputs.Seed}, " +
                    "accuracy on all of them (no held-out images offline)");
            }
            using var train = MnistSet.Load(Path.Combine(cache!, "train-images-idx3-ubyte"), Path.Combine(cache!, "train-labels-idx1-ubyte"));
            if (inputs.Samples + inputs.MetricImages > train.Count)
                throw new ArgumentException($"--samples plus --metric-images ({inputs.Samples + inputs.MetricImages}) exceed the {train.Count} training images.");
            var draw = Permutation(train.Count, inputs.Seed);
            var test = MnistSet.Load(Path.Combine(cache!, "t10k-images-idx3-ubyte"), Path.Combine(cache!, "t10k-labels-idx1-ubyte"));
            return new CalibrationSetup(model, train.Subset(draw[..inputs.Samples]), train.Subset(draw[inputs.Samples..(inputs.Samples + inputs.MetricImages)]), test,
                $"{cache}: calibration on {inputs.Samples} training images and accuracy metric on {inputs.MetricImages} others (seed {inputs.Seed}), " +
                $"results on the {test.Count} test images");
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>A Fisher-Yates permutation of 0..n-1 from <see cref="Random"/>(seed): the same on every machine.</summary>
    internal static long[] Permutation(int n, int seed)
    {
        var rng = new Random(seed);
        var p = new long[n];
        for (int i = 0; i < n; i++) p[i] = i;
        for (int i = n - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        Model.Dispose();
        Calibration.Dispose();
        if (!ReferenceEquals(Metric, Calibration)) Metric.Dispose();
        if (!ReferenceEquals(Evaluation, Metric)) Evaluation.Dispose();
    }
}
