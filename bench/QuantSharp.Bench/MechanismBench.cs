using System.Diagnostics;
using System.Globalization;
using QuantSharp.Modules.Managed;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Bench;

/// <summary>
/// Speed and memory of the ways a layer's weights end up stored quantized (docs/QUANTIZER.md):
/// <c>dotnet run -c Release --project bench/QuantSharp.Bench -- mechanisms</c>. One thread; per case the median of
/// 7 timed rounds of 20 forwards after warm-up, and the bytes of parameters + buffers (each storage once). The
/// transient column is the float32 memory a forward allocates for weights (dequantized weight, freed after).
/// </summary>
internal static class MechanismBench
{
    private sealed class Holder : Module<Tensor, Tensor>
    {
        private readonly Module<Tensor, Tensor> inner; // declared as the base type: the quantizer may replace it

        public Holder(Module<Tensor, Tensor> inner) : base(nameof(Holder))
        {
            this.inner = inner;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => inner.call(x);
    }

    private sealed class TypedLinear : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.Linear inner; // the sealed type: only materialization is possible

        public TypedLinear(TorchSharp.Modules.Linear inner) : base(nameof(TypedLinear))
        {
            this.inner = inner;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => inner.call(x);
    }

    private sealed class Recurrent : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.LSTM lstm;

        public Recurrent(TorchSharp.Modules.LSTM lstm) : base(nameof(Recurrent))
        {
            this.lstm = lstm;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => lstm.call(x).Item1;
    }

    public static int Run()
    {
        torch.set_num_threads(1);
        Console.WriteLine("| case | mechanism | ms / forward | params + buffers | transient weights |");
        Console.WriteLine("|---|---|---:|---:|---:|");
        var int8 = new QuantizationRecipe { Validation = new ValidationPolicy { Enabled = false } };
        var int4 = QuantizationRecipe.Int4WeightOnly(128) with { Validation = int8.Validation };

        var x = torch.randn(32, 1024);
        Report("Linear 1024x1024, x [32, 1024]", "float32", Build(() => new Holder(Linear(1024, 1024))), x, 0);
        Report("", "int8 replaced (QuantizedLinear)", Quantize(() => new Holder(Linear(1024, 1024)), int8), x, 1024 * 1024 * 4);
        Report("", "int8 materialized (field typed Linear)", Quantize(() => new TypedLinear(Linear(1024, 1024)), int8), x, 1024 * 1024 * 4);
        Report("", "int4 g128 replaced", Quantize(() => new Holder(Linear(1024, 1024)), int4), x, 1024 * 1024 * 4);
        Report("", "int4 g128 materialized", Quantize(() => new TypedLinear(Linear(1024, 1024)), int4), x, 1024 * 1024 * 4);

        var seq = torch.randn(32, 8, 256);
        long lstmFloat = 2 * (4 * 256 * 256 * 2) * 4L;
        Report("LSTM 256, 2 layers, x [32, 8, 256]", "float32 (native)", Build(() => new Recurrent(LSTM(256, 256, numLayers: 2))), seq, 0);
        Report("", "int8 materialized", Quantize(() => new Recurrent(LSTM(256, 256, numLayers: 2)), int8), seq, lstmFloat);

        long encFloat = (4 * 256 * 256 + 2 * 256 * 1024) * 4L;
        Report("TransformerEncoderLayer 256/4/1024, x [32, 8, 256]", "float32 (native)", Build(() => new Holder(Encoder())), seq, 0);
        Report("", "int8 materialized (native kept)", Quantize(() => new Holder(Encoder()), int8), seq, encFloat);
        Report("", "float32 managed counterpart", Build(() => new Holder(ManagedModules.FromNative(Encoder()))), seq, 0);
        Report("", "int8 managed counterpart, Linears replaced", Quantize(() => new Holder(ManagedModules.FromNative(Encoder())), int8), seq, 256 * 1024 * 4L);
        return 0;
    }

    private static TorchSharp.Modules.TransformerEncoderLayer Encoder() => TransformerEncoderLayer(256, 4, 1024, dropout: 0);

    private static Module<Tensor, Tensor> Build(Func<Module<Tensor, Tensor>> factory)
    {
        torch.manual_seed(1);
        var m = factory();
        m.eval();
        return m;
    }

    private static Module<Tensor, Tensor> Quantize(Func<Module<Tensor, Tensor>> factory, QuantizationRecipe recipe) =>
        Quantizer.Quantize(Build(factory), recipe, inPlace: true).Model;

    /// <param name="transient">Float32 bytes of the largest weight dequantized during a forward (mechanism-dependent; 0 for float).</param>
    private static void Report(string name, string mechanism, Module<Tensor, Tensor> model, Tensor x, long transient)
    {
        using var noGrad = no_grad();
        for (int i = 0; i < 10; i++) model.call(x).Dispose();
        var rounds = new List<double>();
        for (int r = 0; r < 7; r++)
        {
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < 20; i++)
            {
                using var scope = NewDisposeScope();
                model.call(x);
            }
            rounds.Add(sw.Elapsed.TotalMilliseconds / 20);
        }
        rounds.Sort();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"| {name} | {mechanism} | {rounds[3]:F2} | {ModelMemory.Bytes(model) / 1024.0:F0} KiB | {transient / 1024.0:F0} KiB |"));
    }
}
