using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules.Managed;

/// <summary>The parameters of a native module by name, and random probe inputs of its element type and device.</summary>
internal sealed class NativeParameters
{
    private const ulong ProbeSeed = 20261202;
    private readonly Dictionary<string, Tensor> _byName;
    private readonly string _module;
    private readonly Generator _generator = new(ProbeSeed);

    private NativeParameters(nn.Module native)
    {
        _module = native.GetType().Name;
        _byName = native.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);
        if (_byName.Count == 0) throw new NotSupportedException($"The {_module} has no parameters; nothing to convert.");
        var first = _byName.Values.First();
        (DType, Device, Training) = (first.dtype, first.device, native.training);
    }

    public static NativeParameters Of(nn.Module native) => new(native);

    public ScalarType DType { get; }

    public Device Device { get; }

    public bool Training { get; }

    public Tensor? Find(string name) => _byName.GetValueOrDefault(name);

    public Tensor Get(string name) => Find(name) ?? throw new NotSupportedException(
        $"The {_module} has no parameter '{name}' (it has {string.Join(", ", _byName.Keys)}); this TorchSharp version's layout is not supported.");

    /// <summary>How many consecutive indices <c>prefix0.</c>, <c>prefix1.</c>, ... occur in the parameter names.</summary>
    public int CountIndexed(string prefix)
    {
        int n = 0;
        while (_byName.Keys.Any(k => k.StartsWith($"{prefix}{n}.", StringComparison.Ordinal))) n++;
        return n;
    }

    /// <summary>A standard normal probe input of the module's element type and device (own generator: the global one is untouched).</summary>
    public Tensor Probe(params long[] shape) => randn(shape, ScalarType.Float32, generator: _generator).to(DType, Device);
}

/// <summary>
/// Detects the settings of a native module that TorchSharp does not expose, by comparing its output with the managed
/// module's under each candidate setting on one probe input.
/// </summary>
internal static class NativeProbe
{
    /// <summary>
    /// Applies the one candidate under which <paramref name="runManaged"/> reproduces <paramref name="runNative"/>; both
    /// modules run in eval mode (their training flags are restored), the managed one without gradients.
    /// </summary>
    /// <exception cref="NotSupportedException">No candidate reproduces the native output.</exception>
    /// <exception cref="ArgumentException">More than one does.</exception>
    public static void Resolve<T>(string what, nn.Module native, nn.Module managed, IReadOnlyList<T> candidates, Action<T> apply,
        Func<Tensor[]> runNative, Func<Tensor[]> runManaged)
    {
        bool nativeTraining = native.training, managedTraining = managed.training;
        native.eval();
        managed.eval();
        try
        {
            using var scope = NewDisposeScope();
            // The native module runs with gradients enabled: libtorch 2.10's float32 LSTM returns wrong values under
            // no_grad/inference_mode on CPU (its oneDNN inference path; off by ~0.3 on this project's machines).
            var expected = runNative().Select(t => t.detach()).ToArray();
            using var grad = no_grad();
            var matches = new List<T>();
            foreach (var candidate in candidates)
            {
                try
                {
                    apply(candidate);
                    if (Close(expected, runManaged())) matches.Add(candidate);
                }
                catch (ArgumentException)
                {
                    // The candidate does not fit the input (e.g. heads that do not divide the dimension): not a match.
                }
            }
            if (matches.Count == 1)
            {
                apply(matches[0]);
                return;
            }
            throw matches.Count == 0
                ? new NotSupportedException(
                    $"Cannot convert the {what}: none of the settings tried ({Describe(candidates)}) reproduces its output on a probe input. " +
                    "If you gave settings in NativeConversionOptions, check them; otherwise the module uses options QuantSharp's managed counterpart does not have.")
                : new ArgumentException(
                    $"Cannot tell the settings of the {what} from its outputs: {Describe(matches)} all reproduce them (e.g. weights that are all zero). " +
                    "Give them in NativeConversionOptions (NumHeads, Activation, AddZeroAttn, BatchFirst).");
        }
        finally
        {
            native.train(nativeTraining);
            managed.train(managedTraining);
        }
    }

    /// <summary>Relative tolerance of the probe comparison: far above rounding, far below the effect of a wrong setting.</summary>
    private static double Tolerance(ScalarType t) => t switch
    {
        ScalarType.Float64 => 1e-9,
        ScalarType.Float32 => 1e-4,
        _ => 3e-2,
    };

    private static bool Close(Tensor[] expected, Tensor[] actual)
    {
        if (expected.Length != actual.Length) return false;
        for (int i = 0; i < expected.Length; i++)
        {
            var (a, b) = (expected[i], actual[i]);
            if (a.dtype != b.dtype || !a.shape.SequenceEqual(b.shape)) return false;
            var a64 = a.to(ScalarType.Float64);
            double diff = (a64 - b.to(ScalarType.Float64)).abs().max().item<double>();
            if (!(diff <= Tolerance(a.dtype) * (1 + a64.abs().max().item<double>()))) return false;
        }
        return true;
    }

    private static string Describe<T>(IReadOnlyCollection<T> settings) =>
        string.Join(", ", settings.Take(6)) + (settings.Count > 6 ? $" and {settings.Count - 6} more" : "");
}
