using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;
using Xunit.Abstractions;

namespace QuantSharp.Tests.Modules;

/// <summary>
/// The QAT claim of docs/ACCURACY.md on small fast configurations (issue 11: "QAT recovers at least 70% of the
/// round-to-nearest accuracy drop"), with the same protocol as the Fashion-MNIST numbers: a seeded MLP trained on a
/// seeded synthetic 10-class problem; round-to-nearest (RTN); QAT fine-tuned from the float model with each setting of a
/// small grid (STE, LSQ), the one with the best accuracy on a VALIDATION set kept, and only that one measured on a
/// separate test set. The fine-tuning ends at a low learning rate and the claim is on the median over five batch
/// orders (<see cref="FineTune"/>, <see cref="Orders"/>): a single short run at one rate was a draw whose result moved
/// with the CPU's float rounding (the first version of these tests failed on an AVX2-only CPU). At int2 the
/// Gaussian-classes problem shows the claim. At int4 that problem loses nothing measurable to rounding (0.3 points or
/// less of 4,096, sometimes a gain), so int4 is tested on a problem without label noise where rounding costs 0.9-1.5
/// points; there QAT recovers 58-85% of the drop, mostly below the 70% bar, which the int4 test states rather than hides.
/// </summary>
[Collection(TorchThreadsCollection.Name)]
public class QatRecoveryTests(ITestOutputHelper output)
{
    private sealed class Net : nn.Module<Tensor, Tensor>
    {
        private nn.Module<Tensor, Tensor> fc1, fc2;

        public Net() : base(nameof(Net))
        {
            torch.manual_seed(3);
            fc1 = nn.Linear(32, 64);
            fc2 = nn.Linear(64, 10);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => fc2.call(nn.functional.relu(fc1.call(x)));
    }

    /// <summary>Ten Gaussian classes in 32 dimensions whose centres are close enough that the decision needs every weight.</summary>
    private static (Tensor X, Tensor Y) Data(long n, Tensor centres, Generator g)
    {
        var y = randint(0, 10, [n], generator: g);
        var x = centres.index_select(0, y) + randn(n, 32, generator: g);
        return (x, y);
    }

    private static double Accuracy(nn.Module<Tensor, Tensor> model, Tensor x, Tensor y)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return model.call(x).argmax(1).eq(y).to(ScalarType.Float64).mean().item<double>();
    }

    private static void Train(nn.Module<Tensor, Tensor> model, Tensor x, Tensor y, int steps, double lr, Generator g)
    {
        using var optimizer = optim.Adam(model.parameters(), lr);
        model.train();
        for (int step = 0; step < steps; step++)
        {
            using var scope = NewDisposeScope();
            var idx = randint(0, x.shape[0], [128], generator: g);
            optimizer.zero_grad();
            nn.functional.cross_entropy(model.call(x.index_select(0, idx)), y.index_select(0, idx)).backward();
            optimizer.step();
        }
        model.eval();
    }

    /// <summary>The settings tried, in order: straight-through with min/max scales frozen after 50 steps, and LSQ.</summary>
    private static readonly (string Name, FakeQuantizeOptions Options)[] Grid =
    [
        ("STE", new FakeQuantizeOptions { FreezeObserverAfter = 50 }),
        ("LSQ", new FakeQuantizeOptions { Learnable = true }),
    ];

    /// <summary>
    /// The QAT schedule, also given to the float control: 300 steps of Adam at lr 1e-3, then 300 at 1e-4 over the same
    /// stream of batches. Without the second phase one run's result is a draw: on an AVX2-only CPU (Zen 3, 2026-12-07)
    /// 300 steps at 1e-3 recovered 0-64% of the int4 drop depending on the batch order (eight orders a seed) and 32-102% at
    /// int2; with it 46-93% and 65-108%.
    /// </summary>
    private static void FineTune(nn.Module<Tensor, Tensor> model, Tensor x, Tensor y, ulong order)
    {
        var g = new Generator(order);
        Train(model, x, y, steps: 300, lr: 1e-3, g);
        Train(model, x, y, steps: 300, lr: 1e-4, g);
    }

    /// <summary>
    /// The batch orders QAT is run with; the claim is on the median over them, not on one draw. Three (23-25) were not
    /// enough: on the AVX-512 Zen 4 VM (stop 54) int2 per channel drew 69% and 74% of the drop on the first two, and
    /// their median with the third's 95% was 74%, four points above the bar; over eight orders (23-30) it spread over
    /// 69-108%. The median of five gives 93% there, 95% with libtorch's AVX2 kernels
    /// (<c>ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2</c>) and 94% with its scalar
    /// ones (<c>ATEN_CPU_CAPABILITY=default</c>).
    /// </summary>
    private static readonly ulong[] Orders = [23, 24, 25, 26, 27];

    /// <summary>
    /// QAT from <paramref name="model"/> with each setting of <see cref="Grid"/> (<see cref="FineTune"/>, the same batches
    /// for every setting), converted; the one with the best validation accuracy (ties keep the earlier one).
    /// </summary>
    private static (Net Model, string Setting) ChooseQat(Net model, QuantizationRecipe recipe, Tensor xTrain, Tensor yTrain, Tensor xValidation, Tensor yValidation, ulong order)
    {
        Net? chosen = null;
        double bestValidation = -1;
        string chosenName = "";
        foreach (var (name, options) in Grid)
        {
            var qat = QuantizationAwareTraining.Prepare(model, recipe, () => new Net(), options: options);
            FineTune(qat, xTrain, yTrain, order);
            QuantizationAwareTraining.Convert(qat);
            double v = Accuracy(qat, xValidation, yValidation);
            if (v > bestValidation)
            {
                chosen?.Dispose();
                (chosen, bestValidation, chosenName) = (qat, v, name);
            }
            else qat.Dispose();
        }
        return (chosen!, chosenName);
    }

    /// <summary>
    /// The median test accuracy of QAT chosen on validation over <see cref="Orders"/>, and each order's setting and
    /// accuracy for the message.
    /// </summary>
    private static (double Median, string Runs) MedianQat(Net model, QuantizationRecipe recipe, Tensor xTrain, Tensor yTrain, Tensor xValidation, Tensor yValidation, Tensor xTest, Tensor yTest)
    {
        var runs = new List<(double Accuracy, string Setting)>();
        foreach (ulong order in Orders)
        {
            var (best, setting) = ChooseQat(model, recipe, xTrain, yTrain, xValidation, yValidation, order);
            using (best) runs.Add((Accuracy(best, xTest, yTest), setting));
        }
        double median = runs.Select(r => r.Accuracy).Order().ElementAt(runs.Count / 2);
        return (median, string.Join(", ", runs.Select(r => $"{r.Setting} {r.Accuracy:P2}")));
    }

    [Fact]
    public void QatRecoversMostOfTheRoundToNearestDropAtInt2()
    {
        torch.set_num_threads(1);
        using var scope = NewDisposeScope();
        var g = new Generator(17);
        var centres = randn(10, 32, generator: g) * 0.45f;
        var (xTrain, yTrain) = Data(8192, centres, g);
        var (xTest, yTest) = Data(4096, centres, g);
        var (xValidation, yValidation) = Data(2048, centres, g);
        using var model = new Net();
        Train(model, xTrain, yTrain, steps: 600, lr: 3e-3, g);
        double fp = Accuracy(model, xTest, yTest);

        foreach (var granularity in new Granularity[] { new PerAxis(0), new PerGroup(16) })
        {
            var recipe = new QuantizationRecipe { Type = QuantType.Int2, Granularity = granularity, MinElements = 0 };
            var rtnResult = Quantizer.Quantize(model, recipe, () => new Net());
            using var rtn = rtnResult.Model;
            double rtnAcc = Accuracy(rtn, xTest, yTest);

            var (qatAcc, runs) = MedianQat(model, recipe, xTrain, yTrain, xValidation, yValidation, xTest, yTest);

            double drop = fp - rtnAcc;
            Assert.True(drop > 0.02, $"int2 {granularity}: round-to-nearest should visibly lose accuracy here (float {fp:P2}, RTN {rtnAcc:P2})");
            double recovered = (qatAcc - rtnAcc) / drop;
            // The figures of docs/ACCURACY.md (dotnet test --filter FullyQualifiedName~QatRecoveryTests --logger "console;verbosity=detailed").
            output.WriteLine($"int2 {granularity}: recovered {recovered:P0} (float {fp:P2}, RTN {rtnAcc:P2}, QAT {qatAcc:P2}: {runs})");
            Assert.True(recovered >= 0.7, $"int2 {granularity}: QAT (median of {Orders.Length} batch orders, each chosen on validation) recovered {recovered:P0} of the drop (float {fp:P2}, RTN {rtnAcc:P2}, QAT {qatAcc:P2}: {runs})");
        }
    }

    /// <summary>Inputs N(0, I) labelled by a fixed random MLP of the same shape (no label noise: every error is the model's).</summary>
    private static (Tensor X, Tensor Y) TeacherData(long n, Net teacher, Generator g)
    {
        var x = randn(n, 32, generator: g);
        using var noGrad = no_grad();
        return (x, teacher.call(x).argmax(1));
    }

    /// <summary>
    /// int4 per channel on the teacher-labelled problem, three seeds. The float model is trained until more training no
    /// longer helps (2,400 + 1,200 + 600 steps at decreasing rates), so QAT's gain is not just more training: QAT must
    /// beat RTN of the float model given the same fine-tuning. Measured (seeds 5, 6, 7; median of five batch orders) on
    /// the AVX-512 Zen 4 VM: RTN drops 0.94, 1.50 and 1.32 points of 16,384 and QAT recovers 59%, 74% and 75%; with
    /// libtorch's AVX2 kernels 59%, 65%, 69% (its RTN drops, 0.87, 1.51 and 1.26, are the AVX2-only Zen 3's of stop 53,
    /// where three orders had recovered 66%, 61% and 65%), with its scalar ones 85%, 59%, 58% (<see cref="Orders"/>).
    /// The float control then rounded recovers -53% to 15%.
    /// So the 70% is not reached at int4 on this small problem (on Fashion-MNIST it is, docs/ACCURACY.md);
    /// asserted is a real recovery, at least 40% of the drop, on every seed.
    /// </summary>
    [Theory]
    [InlineData(5)]
    [InlineData(6)]
    [InlineData(7)]
    public void QatRecoversPartOfTheRoundToNearestDropAtInt4(int seed)
    {
        torch.set_num_threads(1);
        using var scope = NewDisposeScope();
        using var teacher = new Net();
        using (no_grad())
        {
            var tg = new Generator((ulong)seed);
            foreach (var p in teacher.parameters()) p.copy_(randn(p.shape, generator: tg) * (p.dim() == 2 ? 1.5 / Math.Sqrt(p.shape[1]) : 0.1));
        }
        var g = new Generator(17);
        var (xTrain, yTrain) = TeacherData(8192, teacher, g);
        var (xTest, yTest) = TeacherData(16384, teacher, g);
        var (xValidation, yValidation) = TeacherData(4096, teacher, g);
        using var model = new Net();
        Train(model, xTrain, yTrain, steps: 2400, lr: 3e-3, g);
        Train(model, xTrain, yTrain, steps: 1200, lr: 1e-3, g);
        Train(model, xTrain, yTrain, steps: 600, lr: 3e-4, g);
        double fp = Accuracy(model, xTest, yTest);
        var recipe = new QuantizationRecipe { Type = QuantType.Int4, Granularity = new PerAxis(0), MinElements = 0 };
        using var rtn = Quantizer.Quantize(model, recipe, () => new Net()).Model;
        double rtnAcc = Accuracy(rtn, xTest, yTest);

        // The control: the float model given the same fine-tuning (first batch order), then rounded.
        using var tuned = new Net();
        tuned.load_state_dict(model.state_dict());
        FineTune(tuned, xTrain, yTrain, Orders[0]);
        using var tunedRtn = Quantizer.Quantize(tuned, recipe, () => new Net()).Model;
        double tunedRtnAcc = Accuracy(tunedRtn, xTest, yTest);

        var (qatAcc, runs) = MedianQat(model, recipe, xTrain, yTrain, xValidation, yValidation, xTest, yTest);

        double drop = fp - rtnAcc;
        string numbers = $"float {fp:P2}, RTN {rtnAcc:P2}, QAT (median of {Orders.Length} batch orders, each chosen on validation) {qatAcc:P2} ({runs}), float fine-tuned then RTN {tunedRtnAcc:P2}";
        output.WriteLine($"int4 seed {seed}: recovered {(qatAcc - rtnAcc) / drop:P0} ({numbers})");
        Assert.True(drop > 0.005, $"int4 seed {seed}: round-to-nearest should lose more than 0.5 points here ({numbers})");
        Assert.True((qatAcc - rtnAcc) / drop >= 0.4, $"int4 seed {seed}: QAT recovered {(qatAcc - rtnAcc) / drop:P0} of the drop ({numbers})");
        Assert.True(qatAcc > tunedRtnAcc, $"int4 seed {seed}: QAT should beat more float training then rounding ({numbers})");
    }
}
