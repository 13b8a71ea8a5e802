using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Modules;

/// <summary>
/// The QAT claim of docs/ACCURACY.md on a small fast configuration (issue 11: "QAT recovers at least 70% of the
/// round-to-nearest accuracy drop"), with the same protocol as the Fashion-MNIST numbers: a seeded MLP trained on a
/// seeded synthetic 10-class problem; round-to-nearest at int2, per channel and per group; QAT fine-tuned from the float
/// model with each setting of a small grid (STE, LSQ), the one with the best accuracy on a VALIDATION set kept, and only
/// that one measured on a separate test set. (At int4 this small problem loses nothing to rounding, so there is no drop
/// to recover; the int4 claim is measured on Fashion-MNIST, docs/ACCURACY.md.)
/// </summary>
[Collection(TorchThreadsCollection.Name)]
public class QatRecoveryTests
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

            // The setting is chosen on the validation set only (ties keep the earlier one); the test set is used once, after.
            Net? chosen = null;
            double bestValidation = -1;
            string chosenName = "";
            foreach (var (name, options) in Grid)
            {
                var qat = QuantizationAwareTraining.Prepare(model, recipe, () => new Net(), options: options);
                Train(qat, xTrain, yTrain, steps: 300, lr: 1e-3, new Generator(23)); // the same batches for every setting
                QuantizationAwareTraining.Convert(qat);
                double v = Accuracy(qat, xValidation, yValidation);
                if (v > bestValidation)
                {
                    chosen?.Dispose();
                    (chosen, bestValidation, chosenName) = (qat, v, name);
                }
                else qat.Dispose();
            }
            using var best = chosen!;
            double qatAcc = Accuracy(best, xTest, yTest);

            double drop = fp - rtnAcc;
            Assert.True(drop > 0.02, $"int2 {granularity}: round-to-nearest should visibly lose accuracy here (float {fp:P2}, RTN {rtnAcc:P2})");
            double recovered = (qatAcc - rtnAcc) / drop;
            Assert.True(recovered >= 0.7, $"int2 {granularity}: QAT ({chosenName}, chosen on validation) recovered {recovered:P0} of the drop (float {fp:P2}, RTN {rtnAcc:P2}, QAT {qatAcc:P2})");
        }
    }
}
