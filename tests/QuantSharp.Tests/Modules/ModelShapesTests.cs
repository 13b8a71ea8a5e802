using QuantSharp.Calibration;
using QuantSharp.Modules;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Tests.Modules;

/// <summary>
/// Layers wherever they live (typed fields, typed lists, Sequential, TorchSharp's native attention/transformer/RNN
/// modules, tied weights, two inputs with a mask): int8 weight-only stores every Linear-like weight quantized, the
/// model shrinks to at most 30% of float32, its output stays within 35 dB SQNR of the float model's on random
/// inputs, and save -> load gives bit-identical outputs.
/// </summary>
public class ModelShapesTests
{
    private const int D = 64;

    /// <summary>Two fields declared as the sealed type Linear (cannot hold a quantized module).</summary>
    private sealed class TypedFields : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.Linear fc1, fc2;

        public TypedFields() : base(nameof(TypedFields))
        {
            torch.manual_seed(21);
            fc1 = Linear(D, 4 * D);
            fc2 = Linear(4 * D, D);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => fc2.call(functional.relu(fc1.call(x)));
    }

    /// <summary>A ModuleList typed by the sealed Linear.</summary>
    private sealed class TypedList : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.ModuleList<TorchSharp.Modules.Linear> layers;

        public TypedList() : base(nameof(TypedList))
        {
            torch.manual_seed(22);
            layers = new(Linear(D, 2 * D), Linear(2 * D, 2 * D), Linear(2 * D, D));
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            foreach (var l in layers) x = functional.gelu(l.call(x));
            return x;
        }
    }

    private sealed class InSequential : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.Sequential body;

        public InSequential() : base(nameof(InSequential))
        {
            torch.manual_seed(23);
            body = Sequential(Linear(D, 4 * D), ReLU(), Linear(4 * D, D));
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => body.call(x);
    }

    /// <summary>TorchSharp's native TransformerEncoder of two TransformerEncoderLayers (batch_first inputs [T, B, D]).</summary>
    private sealed class Encoder : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.TransformerEncoder encoder;

        public Encoder() : base(nameof(Encoder))
        {
            torch.manual_seed(24);
            encoder = TransformerEncoder(TransformerEncoderLayer(D, 4, 4 * D, dropout: 0), 2);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => encoder.call(x);
    }

    private sealed class EncoderLayer : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.TransformerEncoderLayer layer;

        public EncoderLayer() : base(nameof(EncoderLayer))
        {
            torch.manual_seed(25);
            layer = TransformerEncoderLayer(D, 4, 4 * D, dropout: 0);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => layer.call(x);
    }

    private sealed class Attention : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.MultiheadAttention attn;

        public Attention() : base(nameof(Attention))
        {
            torch.manual_seed(26);
            attn = MultiheadAttention(D, 4);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => attn.call(x, x, x, need_weights: false).Item1;
    }

    private sealed class Lstm : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.LSTM lstm;

        public Lstm() : base(nameof(Lstm))
        {
            torch.manual_seed(27);
            lstm = LSTM(D, D, numLayers: 2);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => lstm.call(x).Item1;
    }

    private sealed class Gru : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.GRU gru;

        public Gru() : base(nameof(Gru))
        {
            torch.manual_seed(28);
            gru = GRU(D, D, numLayers: 2);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => gru.call(x).Item1;
    }

    /// <summary>A language-model head tied to the embedding (one storage, two layers).</summary>
    internal sealed class TiedLm : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.Embedding embed;
        private readonly TorchSharp.Modules.Linear head;

        public TiedLm() : base(nameof(TiedLm))
        {
            torch.manual_seed(29);
            embed = Embedding(Vocab, D);
            head = Linear(D, Vocab, hasBias: false);
            head.weight = embed.weight!;
            RegisterComponents();
        }

        public const int Vocab = 512;

        public override Tensor forward(Tensor ids) => head.call(embed.call(ids));
    }

    /// <summary>Two inputs: a sequence and its key-padding mask (true = padding), as attention models take them.</summary>
    internal sealed class Masked : Module<Tensor, Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.MultiheadAttention attn;
        private readonly Module<Tensor, Tensor> proj;

        public Masked() : base(nameof(Masked))
        {
            torch.manual_seed(30);
            attn = MultiheadAttention(D, 4);
            proj = Linear(D, D);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x, Tensor mask) => proj.call(attn.call(x, x, x, key_padding_mask: mask, need_weights: false).Item1);
    }

    public static TheoryData<string> OneInputModels() => ["typed", "typed-list", "sequential", "encoder", "encoder-layer", "attention", "lstm", "gru"];

    private static Module<Tensor, Tensor> Build(string name) => name switch
    {
        "typed" => new TypedFields(),
        "typed-list" => new TypedList(),
        "sequential" => new InSequential(),
        "encoder" => new Encoder(),
        "encoder-layer" => new EncoderLayer(),
        "attention" => new Attention(),
        "lstm" => new Lstm(),
        "gru" => new Gru(),
        _ => throw new ArgumentException(name),
    };

    /// <summary>Inputs [T, B, D] (sequence first, TorchSharp's default for these modules).</summary>
    private static Tensor Input(long seed)
    {
        torch.manual_seed(seed);
        return torch.randn(7, 3, D);
    }

    [Theory]
    [MemberData(nameof(OneInputModels))]
    public void Int8WeightOnlyStoresEveryWeightQuantized(string name)
    {
        using var scope = NewDisposeScope();
        var model = Build(name);
        model.eval();
        var r = Quantizer.Quantize(model, new QuantizationRecipe(), () => Build(name));
        var q = (Module<Tensor, Tensor>)r.Model;
        AssertStoredQuantized(model, q);
        Assert.Equal(CheckStatus.Passed, r.Report!.ReloadCheck);

        using var noGrad = no_grad();
        var x = Input(5);
        var expected = model.call(x);
        var actual = q.call(x);
        double db = Metrics.Sqnr(expected, actual);
        Assert.True(db >= 35, $"{name}: output SQNR {db:F1} dB < 35 dB");

        using var dir = new TempDir();
        Quantizer.Save(q, dir["m.safetensors"]);
        var reloaded = (Module<Tensor, Tensor>)Quantizer.Load(() => Build(name), dir["m.safetensors"]);
        Assert.True(TestData.BitEqual(actual, reloaded.call(x)), $"{name}: reloaded outputs differ");
        // The caller's model still computes in float32 and was not touched.
        Assert.True(TestData.BitEqual(expected, model.call(x)));
    }

    [Fact]
    public void TiedEmbeddingAndHeadAreQuantizedOnceAndStayTied()
    {
        using var scope = NewDisposeScope();
        var model = new TiedLm();
        model.eval();
        long floatBytes = ModelMemory.Bytes(model);
        Assert.Equal(TiedLm.Vocab * D * 4L, floatBytes); // one storage, counted once

        var r = Quantizer.Quantize(model, new QuantizationRecipe(), () => new TiedLm());
        Assert.Equal(["embed", "head"], r.Layers.Select(l => l.Name));
        var weights = ModuleTree.Walk(r.Model).SelectMany(e => ModuleQuantization.WeightsOf(e.Module)).Select(w => w.Weight).ToList();
        Assert.Equal(2, weights.Count);
        Assert.Same(weights[0], weights[1]);
        // int8 data + one float32 scale per row, once.
        long expectedBytes = TiedLm.Vocab * D + TiedLm.Vocab * 4L;
        Assert.Equal(expectedBytes, ModelMemory.Bytes(r.Model));
        Assert.Equal(floatBytes, r.Report!.OriginalBytes);
        Assert.Equal(expectedBytes, r.Report.StoredBytes);
        Assert.Equal(expectedBytes, r.Layers.Sum(l => l.QuantizedBytes));

        using var noGrad = no_grad();
        var ids = torch.randint(0, TiedLm.Vocab, [4, 9], dtype: ScalarType.Int64);
        var actual = ((Module<Tensor, Tensor>)r.Model).call(ids);
        Assert.True(Metrics.Sqnr(model.call(ids), actual) >= 35);

        using var dir = new TempDir();
        Quantizer.Save(r.Model, dir["lm.safetensors"]);
        using (var file = QuantSharp.Serialization.QuantizedCheckpoint.Load(dir["lm.safetensors"]))
            Assert.Equal(["embed.weight"], file.Quantized.Keys); // stored once
        var reloaded = Quantizer.Load(() => new TiedLm(), dir["lm.safetensors"]);
        var again = ModuleTree.Walk(reloaded).SelectMany(e => ModuleQuantization.WeightsOf(e.Module)).Select(w => w.Weight).ToList();
        Assert.Same(again[0], again[1]);
        Assert.Equal(expectedBytes, ModelMemory.Bytes(reloaded));
        Assert.True(TestData.BitEqual(actual, ((Module<Tensor, Tensor>)reloaded).call(ids)));
    }

    [Fact]
    public void FloatHalfOfATiedModelIsHalfItsSize()
    {
        using var scope = NewDisposeScope();
        var r = Quantizer.Quantize(new TiedLm(), QuantizationRecipe.Float16(), () => new TiedLm());
        Assert.Equal(0.5, (double)r.Report!.StoredBytes / r.Report.OriginalBytes, 3);
    }

    [Fact]
    public void TwoInputModelWithAMaskIsQuantized()
    {
        using var scope = NewDisposeScope();
        var model = new Masked();
        model.eval();
        var r = Quantizer.Quantize(model, new QuantizationRecipe(), () => new Masked());
        var q = (Module<Tensor, Tensor, Tensor>)r.Model;
        AssertStoredQuantized(model, q);

        using var noGrad = no_grad();
        var x = Input(6);
        var mask = torch.zeros(3, 7, dtype: ScalarType.Bool);
        mask[0, 5] = torch.tensor(true);
        mask[0, 6] = torch.tensor(true);
        var expected = model.call(x, mask);
        var actual = q.call(x, mask);
        Assert.True(Metrics.Sqnr(expected, actual) >= 35, $"SQNR {Metrics.Sqnr(expected, actual):F1}");

        using var dir = new TempDir();
        Quantizer.Save(q, dir["m.safetensors"]);
        var reloaded = (Module<Tensor, Tensor, Tensor>)Quantizer.Load(() => new Masked(), dir["m.safetensors"]);
        Assert.True(TestData.BitEqual(actual, reloaded.call(x, mask)));
    }

    /// <summary>No float tensor of rank 2+ is held any more, and parameters + buffers are at most 30% of float32.</summary>
    private static void AssertStoredQuantized(nn.Module original, nn.Module quantized)
    {
        var big = quantized.parameters().Cast<Tensor>().Concat(quantized.buffers())
            .Where(t => t.is_floating_point() && t.dim() >= 2 && t.numel() > 0).Select(t => QuantSpec.FormatShape(t.shape)).ToList();
        Assert.True(big.Count == 0, $"float weights left: {string.Join(", ", big)}");
        double ratio = (double)ModelMemory.Bytes(quantized) / ModelMemory.Bytes(original);
        Assert.True(ratio <= 0.30, $"parameters + buffers are {ratio:P1} of float32");
    }
}

/// <summary>Calibration of a model with two inputs (sequence and mask) through callbacks.</summary>
public class CallbackCalibrationTests
{
    [Fact]
    public void MaskedModelIsCalibratedThroughACallback()
    {
        using var scope = NewDisposeScope();
        var model = new ModelShapesTests.Masked();
        model.eval();
        torch.manual_seed(8);
        var data = Enumerable.Range(0, 4).Select(_ => (X: torch.randn(7, 8, 64), Mask: torch.zeros(8, 7, dtype: ScalarType.Bool))).ToList();
        foreach (var (_, mask) in data) mask[.., 6] = torch.tensor(true);
        int runs = 0;
        var batches = data.Select(b => new CalibrationBatch(m => { runs++; return ((Module<Tensor, Tensor, Tensor>)m).call(b.X, b.Mask); }, b.X.shape[1]));

        var r = Quantizer.Quantize(model, QuantizationRecipe.Int8Static() with { CalibrationSamples = 24 }, batches, () => new ModelShapesTests.Masked());
        Assert.Equal(24, r.CalibrationSamples); // 3 of the 4 batches of 8 reach the 24 asked
        // The Linear field typed Module<Tensor, Tensor> is replaced and gets calibrated input qparams; the native attention is materialized.
        var proj = r.Layers.Single(l => l.Name == "proj");
        Assert.NotNull(proj.Input);
        Assert.True(proj.Input!.Scale > 0);
        Assert.Null(r.Layers.Single(l => l.Name == "attn").Input);
        Assert.NotNull(r.Report!.ModelOutputSqnrDb);
        Assert.True(r.Report.ModelOutputSqnrDb > 25, $"model SQNR {r.Report.ModelOutputSqnrDb:F1}");
        Assert.Equal(CheckStatus.Passed, r.Report.ReloadCheck);
        Assert.Contains("outputs", r.Report.ReloadDetail);
        Assert.Equal(3 + 3, runs); // calibration, then the quantized model's output and the reload check's two runs
    }

    [Fact]
    public void TensorBatchesForATwoInputModelAskForCallbacks()
    {
        using var scope = NewDisposeScope();
        var ex = Assert.Throws<ModelQuantizationException>(() => Quantizer.Quantize(new ModelShapesTests.Masked(), QuantizationRecipe.Int8Static(),
            factory: () => new ModelShapesTests.Masked(), calibrationData: [torch.randn(7, 2, 64)]));
        Assert.Contains("CalibrationBatch", ex.Message);
    }
}

/// <summary>
/// Native modules converted to their managed counterparts (ManagedModules.ReplaceNative) before quantizing: every
/// projection becomes a replaced QuantizedLinear, so static activation quantization reaches inside attention.
/// </summary>
public class ManagedCounterpartQuantizationTests
{
    private sealed class Block : Module<Tensor, Tensor>
    {
        private readonly Module<Tensor, Tensor> layer; // the base type: can hold the managed counterpart

        public Block() : base(nameof(Block))
        {
            torch.manual_seed(31);
            layer = TransformerEncoderLayer(64, 4, 256, dropout: 0);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => layer.call(x);
    }

    private static Block Managed()
    {
        var m = new Block();
        Assert.Single(QuantSharp.Modules.Managed.ManagedModules.ReplaceNative(m).Replaced);
        return m;
    }

    [Fact]
    public void ConvertedTransformerLayerIsQuantizedWithW8A8()
    {
        using var scope = NewDisposeScope();
        var reference = new Block();
        reference.eval();
        torch.manual_seed(9);
        var data = Enumerable.Range(0, 3).Select(_ => torch.randn(7, 4, 64)).ToList();
        var r = Quantizer.Quantize(Managed(), QuantizationRecipe.Int8Static() with { CalibrationSamples = 21 }, factory: Managed,
            calibrationData: data);
        var names = r.Layers.Select(l => l.Name).ToList();
        Assert.Equal(["layer.self_attn.q_proj", "layer.self_attn.k_proj", "layer.self_attn.v_proj", "layer.self_attn.out_proj", "layer.linear1", "layer.linear2"],
            names.Where(n => n.Contains("proj", StringComparison.Ordinal) || n.Contains("linear", StringComparison.Ordinal)));
        Assert.All(r.Layers, l => Assert.NotNull(l.Input));
        Assert.All(ModuleTree.Walk(r.Model).Where(e => r.Layers.Any(l => l.Name == e.Name)), e => Assert.IsType<QuantizedLinear>(e.Module));
        Assert.Equal(CheckStatus.Passed, r.Report!.ReloadCheck);

        using var noGrad = no_grad();
        var x = torch.randn(7, 4, 64);
        double db = Metrics.Sqnr(reference.call(x), ((Module<Tensor, Tensor>)r.Model).call(x));
        Assert.True(db >= 25, $"W8A8 output SQNR {db:F1} dB");
    }
}
