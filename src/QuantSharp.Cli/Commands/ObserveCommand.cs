using System.CommandLine;
using System.Globalization;
using System.Text;
using QuantSharp.Observers;
using QuantSharp.Serialization;
using Spectre.Console;
using TorchSharp;

namespace QuantSharp.Cli.Commands;

/// <summary><c>quantsharp observe</c>: runs one observer over one tensor of a safetensors file and prints its parameters.</summary>
internal static class ObserveCommand
{
    internal static Command Create()
    {
        var file = new Argument<string>("file") { Description = "A .safetensors file." };
        var tensor = new Option<string>("--tensor") { Description = "Name of the tensor to observe.", Required = true };
        var observer = new Option<string>("--observer")
        {
            Description = "minmax, moving-average, histogram or percentile.",
            DefaultValueFactory = _ => "minmax",
        };
        var dtype = new Option<string>("--dtype") { Description = "int8, uint8, int4 or uint4.", DefaultValueFactory = _ => "int8" };
        var scheme = new Option<string>("--scheme")
        {
            Description = "symmetric or affine (percentile: symmetric = threshold on |x|, affine = two-sided).",
            DefaultValueFactory = _ => "affine",
        };
        var axis = new Option<int?>("--axis") { Description = "Channel axis for per-channel parameters (minmax, moving-average)." };
        var groupSize = new Option<int?>("--group-size") { Description = "Group size along the last dimension for per-group parameters (minmax, moving-average)." };
        var averaging = new Option<float?>("--averaging-constant") { Description = "Moving-average weight of each new chunk, in (0, 1] (default 0.01)." };
        var chunks = new Option<int>("--chunks")
        {
            Description = "Feed the tensor as K chunks along dim 0, in order (as torch.chunk: chunk size ceil(n/K)).",
            DefaultValueFactory = _ => 1,
        };
        var percentile = new Option<double?>("--percentile") { Description = "Percentile observer: percent of values kept, in (0, 100] (default 99.99)." };
        var method = new Option<string?>("--method") { Description = "Histogram observer: entropy (KL, TensorRT/ONNX Runtime; default) or l2 (PyTorch's HistogramObserver)." };
        var bins = new Option<int?>("--bins") { Description = "Histogram/percentile bins (default 2048)." };
        var mergeBatches = new Option<bool>("--merge-batches")
        {
            Description = "Histogram (entropy) and percentile: merge each chunk into the histogram as a separate ONNX Runtime collect call (default: all chunks are one collection, as ONNX Runtime's calibrators).",
        };
        var reduceRange = new Option<bool>("--reduce-range") { Description = "Use one bit less of the range (PyTorch's reduce_range)." };
        var json = new Option<bool>("--json") { Description = "Print one JSON object {scale, zero_point, min, max[, threshold]}." };

        var cmd = new Command("observe", "Run an observer over one tensor of a safetensors file and print scales and zero points.");
        cmd.Arguments.Add(file);
        foreach (var o in new Option[] { tensor, observer, dtype, scheme, axis, groupSize, averaging, chunks, percentile, method, bins, mergeBatches, reduceRange, json })
            cmd.Options.Add(o);

        cmd.SetAction(parseResult =>
        {
            var output = parseResult.InvocationConfiguration.Output;
            var error = parseResult.InvocationConfiguration.Error;
            try
            {
                var request = new ObserveRequest(
                    parseResult.GetValue(file)!,
                    parseResult.GetValue(tensor)!,
                    parseResult.GetValue(observer)!,
                    parseResult.GetValue(dtype)!,
                    parseResult.GetValue(scheme)!,
                    parseResult.GetValue(axis),
                    parseResult.GetValue(groupSize),
                    parseResult.GetValue(averaging),
                    parseResult.GetValue(chunks),
                    parseResult.GetValue(percentile),
                    parseResult.GetValue(method),
                    parseResult.GetValue(bins),
                    parseResult.GetValue(reduceRange),
                    parseResult.GetValue(mergeBatches));
                var (result, info) = Run(request);
                if (parseResult.GetValue(json)) output.WriteLine(ToJson(result));
                else WriteTable(output, request, info, result);
                return 0;
            }
            catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or IOException
                                          or InvalidDataException or UnauthorizedAccessException or NotSupportedException or QuantizationException
                                          or KeyNotFoundException or System.Text.Json.JsonException)
            {
                return CheckpointConsole.Fail(parseResult, ex.Message); // exit 2: bad input or options, as every command

            }
        });
        return cmd;
    }

    /// <summary>The parsed command line of one <c>observe</c> run.</summary>
    internal sealed record ObserveRequest(
        string File, string Tensor, string Observer, string DType, string Scheme,
        int? Axis = null, int? GroupSize = null, float? AveragingConstant = null, int Chunks = 1,
        double? Percentile = null, string? Method = null, int? Bins = null, bool ReduceRange = false, bool MergeBatches = false);

    /// <summary>Checks the options, reads the tensor, feeds it and returns the observer's parameters.</summary>
    internal static (ObserverResult Result, SafetensorsTensorInfo Info) Run(ObserveRequest r)
    {
        string observerName = r.Observer.Trim().ToLowerInvariant();
        if (!ObserverFactory.Names.Contains(observerName))
            throw new ArgumentException($"Unknown observer '{r.Observer}'. Use one of: {string.Join(", ", ObserverFactory.Names)}.");
        if (r.AveragingConstant is not null && observerName != "moving-average")
            throw new ArgumentException("--averaging-constant applies only to --observer moving-average.");
        if (r.Percentile is not null && observerName != "percentile")
            throw new ArgumentException("--percentile applies only to --observer percentile.");
        if (r.Method is not null && observerName != "histogram")
            throw new ArgumentException("--method applies only to --observer histogram.");
        if (r.Bins is not null && observerName is not ("histogram" or "percentile"))
            throw new ArgumentException("--bins applies only to --observer histogram or percentile.");
        if ((r.Axis is not null || r.GroupSize is not null) && observerName is "histogram" or "percentile")
            throw new ArgumentException($"--observer {observerName} is per-tensor only; drop --axis/--group-size, or use minmax or moving-average.");
        if (r.Chunks < 1)
            throw new ArgumentException($"--chunks must be at least 1, got {r.Chunks}.");
        if (r.MergeBatches && (observerName is not ("histogram" or "percentile") || r.Method?.Trim().ToLowerInvariant() == "l2"))
            throw new ArgumentException("--merge-batches applies only to ONNX Runtime's histograms: --observer histogram (entropy) or percentile.");

        QuantType type = QuantTypeInfo.Parse(r.DType);
        if (type is not (QuantType.Int8 or QuantType.UInt8 or QuantType.Int4 or QuantType.UInt4))
            throw new ArgumentException($"--dtype {r.DType} is not supported by observe; use int8, uint8, int4 or uint4.");
        QuantScheme scheme = r.Scheme.Trim().ToLowerInvariant() switch
        {
            "symmetric" or "sym" => QuantScheme.Symmetric,
            "affine" or "asymmetric" or "asym" => QuantScheme.Affine,
            _ => throw new ArgumentException($"Unknown --scheme '{r.Scheme}'. Use symmetric or affine."),
        };
        HistogramMethod histogramMethod = (r.Method?.Trim().ToLowerInvariant()) switch
        {
            null or "entropy" or "kl" => HistogramMethod.Entropy,
            "l2" => HistogramMethod.L2,
            _ => throw new ArgumentException($"Unknown --method '{r.Method}'. Use entropy or l2."),
        };
        var defaults = new ObserverOptions();
        var options = new ObserverOptions
        {
            Type = type,
            Scheme = scheme,
            Axis = r.Axis,
            GroupSize = r.GroupSize,
            ReduceRange = r.ReduceRange,
            AveragingConstant = r.AveragingConstant ?? defaults.AveragingConstant,
            Percentile = r.Percentile ?? defaults.Percentile,
            Bins = r.Bins ?? defaults.Bins,
            Method = histogramMethod,
            MergeBatches = r.MergeBatches,
            Name = r.Tensor,
        };
        var observer = ObserverFactory.Create(observerName, options);

        if (Directory.Exists(r.File))
            throw new FileNotFoundException($"'{r.File}' is a folder; observe reads one tensor of one .safetensors file (give the shard that holds it).", r.File);
        if (!File.Exists(r.File))
            throw new FileNotFoundException($"No such file: {r.File}", r.File);
        using var st = SafetensorsFile.Open(r.File);
        if (!st.Contains(r.Tensor))
        {
            var names = st.Tensors.Select(t => t.Name).ToList();
            // Names containing the request, or sharing its prefix up to the last '/' or '.' (e.g. 'gauss/').
            int cut = Math.Max(r.Tensor.LastIndexOf('/'), r.Tensor.LastIndexOf('.'));
            string prefix = cut > 0 ? r.Tensor[..(cut + 1)] : "\0";
            var similar = names.Where(n => n.Contains(r.Tensor, StringComparison.OrdinalIgnoreCase)
                                           || n.StartsWith(prefix, StringComparison.OrdinalIgnoreCase)).Take(10).ToList();
            var shown = (similar.Count > 0 ? similar : names.Take(10).ToList());
            throw new ArgumentException(
                $"{r.File} has no tensor named '{r.Tensor}'. " +
                (names.Count == 0 ? "The file holds no tensors." :
                    $"{(similar.Count > 0 ? "Similar names" : "Some of its " + names.Count + " tensors")}: {string.Join(", ", shown)}" +
                    (names.Count > shown.Count ? ", ..." : ".")));
        }
        var info = st.GetInfo(r.Tensor);
        if (!info.DType.IsFloatingPoint())
            throw new ArgumentException(
                $"Tensor '{r.Tensor}' has dtype {info.DType}; observers need a floating-point tensor (F32, F16, BF16, F64).");
        if (r.Chunks > 1 && info.Shape.Length == 0)
            throw new ArgumentException($"Tensor '{r.Tensor}' is a scalar; --chunks needs a dimension 0 to split along.");

        using (var scope = torch.NewDisposeScope())
        {
            var t = st.ReadTensor(r.Tensor);
            if (r.Chunks == 1 || t.numel() == 0)
                observer.Observe(t);
            else
                foreach (var chunk in ChunksAlongDim0(t, r.Chunks)) observer.Observe(chunk);
        }
        return (observer.ComputeQParams(), info);
    }

    /// <summary>torch.chunk(t, k, dim=0): pieces of ceil(n/k) rows, in order (possibly fewer than k).</summary>
    internal static IEnumerable<torch.Tensor> ChunksAlongDim0(torch.Tensor t, int k)
    {
        long n = t.shape[0];
        long size = (n + k - 1) / k;
        for (long start = 0; start < n; start += size)
            yield return t.narrow(0, start, Math.Min(size, n - start));
    }

    /// <summary>The JSON object printed by <c>--json</c>.</summary>
    internal static string ToJson(ObserverResult r)
    {
        var sb = new StringBuilder();
        sb.Append("{\"scale\": ").Append(Floats(r.Scale))
          .Append(", \"zero_point\": [").Append(string.Join(", ", r.ZeroPoint.Select(z => z.ToString(CultureInfo.InvariantCulture)))).Append(']')
          .Append(", \"min\": ").Append(Floats(r.Min))
          .Append(", \"max\": ").Append(Floats(r.Max));
        if (r.Threshold is not null) sb.Append(", \"threshold\": ").Append(Floats(r.Threshold));
        return sb.Append('}').ToString();
    }

    private static string Floats(float[] values) => "[" + string.Join(", ", values.Select(Format)) + "]";

    /// <summary>Shortest round-trip decimal of a float32 (as the reference JSON writes them).</summary>
    private static string Format(float v) => v.ToString("R", CultureInfo.InvariantCulture);

    private static void WriteTable(TextWriter output, ObserveRequest r, SafetensorsTensorInfo info, ObserverResult result)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        string granularity = r.GroupSize is int g ? $"groups of {g}" : r.Axis is int a ? $"per-channel (axis {a})" : "per-tensor";
        console.WriteLine($"{r.Tensor} [{string.Join(", ", info.Shape)}] {info.DType}: {r.Observer}, {r.DType} {r.Scheme}, {granularity}" +
                          (r.ReduceRange ? ", reduce-range" : "") + (r.Chunks > 1 ? $", fed as {r.Chunks} chunks" : ""));
        var table = new Table().AddColumn(r.GroupSize is not null ? "group" : r.Axis is not null ? "channel" : "")
            .AddColumn(new TableColumn("scale").RightAligned())
            .AddColumn(new TableColumn("zero point").RightAligned())
            .AddColumn(new TableColumn("min").RightAligned())
            .AddColumn(new TableColumn("max").RightAligned());
        for (int i = 0; i < result.Scale.Length; i++)
            table.AddRow(result.Scale.Length == 1 && r.Axis is null && r.GroupSize is null ? "tensor" : i.ToString(CultureInfo.InvariantCulture),
                Format(result.Scale[i]), result.ZeroPoint[i].ToString(CultureInfo.InvariantCulture), Format(result.Min[i]), Format(result.Max[i]));
        console.Write(table);
        if (result.Threshold is { } th)
            console.WriteLine($"threshold (range the scale was computed from): [{Format(th[0])}, {Format(th[1])}]");
    }
}
