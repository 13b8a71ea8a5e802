using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Cli.Demo;

/// <summary>
/// The small MNIST CNN used as the embedded demo model (and by examples/TrainMnist, which trains it):
/// conv(1→16, 3×3)+ReLU+maxpool(2), conv(16→32, 3×3)+ReLU+maxpool(2), linear(32·5·5→64)+ReLU, linear(64→10).
/// Input: normalised images [N, 1, 28, 28] (see <see cref="Mean"/>, <see cref="Std"/>); output: logits [N, 10].
/// </summary>
/// <remarks>
/// The layer fields are typed <c>Module&lt;Tensor, Tensor&gt;</c> (not <c>Conv2d</c>/<c>Linear</c>) so that a quantizer can
/// swap them for quantized modules, and <see cref="forward"/> calls each child through <c>call</c> so that forward hooks
/// (calibration observers) fire. State-dict names: <c>conv1.*</c>, <c>conv2.*</c>, <c>fc1.*</c>, <c>fc2.*</c>.
/// </remarks>
internal sealed class MnistNet : Module<Tensor, Tensor>
{
    /// <summary>Mean of the MNIST training pixels (in [0, 1]), used to normalise inputs.</summary>
    public const float Mean = 0.1307f;

    /// <summary>Standard deviation of the MNIST training pixels (in [0, 1]), used to normalise inputs.</summary>
    public const float Std = 0.3081f;

#pragma warning disable IDE0044 // fields are replaced by reflection when a quantizer swaps layers
    private Module<Tensor, Tensor> conv1;
    private Module<Tensor, Tensor> conv2;
    private Module<Tensor, Tensor> fc1;
    private Module<Tensor, Tensor> fc2;
#pragma warning restore IDE0044

    /// <summary>Builds the network with freshly initialised weights.</summary>
    public MnistNet() : base(nameof(MnistNet))
    {
        conv1 = Conv2d(1, 16, kernel_size: 3);
        conv2 = Conv2d(16, 32, kernel_size: 3);
        fc1 = Linear(32 * 5 * 5, 64);
        fc2 = Linear(64, 10);
        RegisterComponents();
    }

    /// <summary>Logits [N, 10] for normalised images [N, 1, 28, 28].</summary>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = functional.max_pool2d(functional.relu(conv1.call(input)), 2);   // [N,16,13,13]
        x = functional.max_pool2d(functional.relu(conv2.call(x)), 2);          // [N,32,5,5]
        x = functional.relu(fc1.call(x.flatten(1)));                           // [N,64]
        return fc2.call(x).MoveToOuterDisposeScope();                         // [N,10]
    }

    /// <summary>Builds a network and loads the float32 weights of a safetensors file written by examples/TrainMnist.</summary>
    public static MnistNet Load(string safetensorsPath)
    {
        if (Directory.Exists(safetensorsPath))
            throw new InvalidDataException($"'{safetensorsPath}' is a folder; --model takes the MnistNet float32 weights as one .safetensors file " +
                "(e.g. the bundled Assets/mnist-cnn.safetensors).");
        using var file = QuantSharp.Serialization.SafetensorsFile.Open(safetensorsPath);
        if (file.Metadata.ContainsKey(QuantSharp.Serialization.QuantizedCheckpoint.FormatKey))
            throw new InvalidDataException($"'{safetensorsPath}' is already quantized (a QuantSharp quantized checkpoint); --model takes the " +
                "float32 MnistNet weights it was made from (e.g. the bundled Assets/mnist-cnn.safetensors). Load a quantized file with Quantizer.Load.");
        var net = new MnistNet();
        var expected = net.state_dict();
        var missing = expected.Keys.Where(k => !file.Contains(k)).ToList();
        if (missing.Count > 0)
        {
            net.Dispose();
            throw new InvalidDataException(
                $"{safetensorsPath}: not an MnistNet checkpoint, missing tensor(s) {string.Join(", ", missing)}. " +
                "Train one with `dotnet run --project examples/TrainMnist` or use the bundled Assets/mnist-cnn.safetensors.");
        }
        using (no_grad())
        {
            foreach (var (name, target) in expected)
            {
                using var t = file.ReadTensor(name);
                if (!t.shape.SequenceEqual(target.shape))
                {
                    // The message first: disposing the network disposes target.
                    string message = $"{safetensorsPath}: tensor '{name}' has shape [{string.Join(", ", t.shape)}], MnistNet needs [{string.Join(", ", target.shape)}].";
                    net.Dispose();
                    throw new InvalidDataException(message);
                }
                target.copy_(t);
            }
        }
        net.eval();
        return net;
    }
}
