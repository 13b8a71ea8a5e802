using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Tests.Modules;

/// <summary>Small models for the quantizer tests. Fields that may be swapped are declared Module&lt;Tensor, Tensor&gt;.</summary>
internal sealed class Mlp : Module<Tensor, Tensor>
{
    private Module<Tensor, Tensor> fc1, fc2, fc3;
    private readonly Module<Tensor, Tensor> act = ReLU();

    public Mlp(long inputs = 64, long hidden = 128, long outputs = 10, long seed = 1) : base(nameof(Mlp))
    {
        torch.manual_seed(seed);
        fc1 = Linear(inputs, hidden);
        fc2 = Linear(hidden, hidden);
        fc3 = Linear(hidden, outputs);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => fc3.call(act.call(fc2.call(act.call(fc1.call(x)))));
}

/// <summary>Conv features in a Sequential, a Linear classifier, as in a small image classifier.</summary>
internal sealed class ConvNet : Module<Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> features;
    private Module<Tensor, Tensor> classifier;

    public ConvNet(long seed = 2) : base(nameof(ConvNet))
    {
        torch.manual_seed(seed);
        features = Sequential(
            ("0", Conv2d(1, 16, 3, padding: 1)), ("1", ReLU()),
            ("2", Conv2d(16, 32, 3, padding: 1)), ("3", ReLU()),
            ("4", AdaptiveAvgPool2d(4)), ("5", Flatten()));
        classifier = Linear(32 * 16, 10);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => classifier.call(features.call(x));
}

/// <summary>A custom layer with its own parameter (unsupported by the quantizer).</summary>
internal sealed class Scale : Module<Tensor, Tensor>
{
    private readonly TorchSharp.Modules.Parameter gain;

    public Scale(long n) : base(nameof(Scale))
    {
        gain = Parameter(torch.ones(n));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => x * gain;
}

/// <summary>A mix: a Linear in a field typed Linear (cannot be swapped), a custom layer, an LSTM, a ModuleList and a ModuleDict.</summary>
internal sealed class MixedNet : Module<Tensor, Tensor>
{
    private readonly TorchSharp.Modules.Linear typed;
    private readonly Module<Tensor, Tensor> head;
    private readonly Scale scale;
    private readonly TorchSharp.Modules.LSTM lstm;
    private readonly TorchSharp.Modules.ModuleList<Module<Tensor, Tensor>> blocks;
    private readonly TorchSharp.Modules.ModuleDict<Module<Tensor, Tensor>> named;

    public MixedNet(long seed = 3) : base(nameof(MixedNet))
    {
        torch.manual_seed(seed);
        typed = Linear(32, 32);
        blocks = new TorchSharp.Modules.ModuleList<Module<Tensor, Tensor>>(Linear(32, 32), Linear(32, 32));
        named = new TorchSharp.Modules.ModuleDict<Module<Tensor, Tensor>>();
        named.Add("proj", Linear(32, 32));
        scale = new Scale(32);
        lstm = LSTM(32, 32);
        head = Linear(32, 4);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        x = typed.call(x);
        foreach (var b in blocks) x = b.call(x);
        x = named["proj"].call(x);
        x = scale.call(x);
        return head.call(x);
    }
}

/// <summary>An embedding followed by a Linear.</summary>
internal sealed class EmbedNet : Module<Tensor, Tensor>
{
    private Module<Tensor, Tensor> embed, proj;

    public EmbedNet(long seed = 4) : base(nameof(EmbedNet))
    {
        torch.manual_seed(seed);
        embed = Embedding(100, 64);
        proj = Linear(64, 8);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => proj.call(embed.call(x));
}

/// <summary>A model without quantizable layers.</summary>
internal sealed class NoLinearNet : Module<Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> act = ReLU();
    private readonly Scale scale = new(8);

    public NoLinearNet() : base(nameof(NoLinearNet)) => RegisterComponents();

    public override Tensor forward(Tensor x) => scale.call(act.call(x));
}

/// <summary>A model whose forward calls a child's forward directly (hooks do not fire).</summary>
internal sealed class DirectForwardNet : Module<Tensor, Tensor>
{
    private Module<Tensor, Tensor> fc;

    public DirectForwardNet() : base(nameof(DirectForwardNet))
    {
        torch.manual_seed(5);
        fc = Linear(8, 8);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => fc.forward(x);
}

internal static class TestData
{
    /// <summary>Batches of standard normal inputs of shape [batch, ...sample].</summary>
    public static List<Tensor> Batches(int count, long batch, long[] sample, long seed = 7)
    {
        var gen = new torch.Generator((ulong)seed);
        return Enumerable.Range(0, count).Select(_ => torch.randn(sample.Prepend(batch).ToArray(), generator: gen)).ToList();
    }

    /// <summary>A deep copy of every state tensor (for bit-identity checks).</summary>
    public static Dictionary<string, Tensor> Snapshot(Module m) =>
        m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());

    public static bool BitEqual(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.contiguous().bytes.SequenceEqual(b.contiguous().bytes);
}
