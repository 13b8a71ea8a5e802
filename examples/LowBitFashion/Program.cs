// Low-bit results of the demo CNN (QuantSharp.Cli.Demo.MnistNet) on the Fashion-MNIST test split (docs/ACCURACY.md):
// float32, round-to-nearest (RTN), GPTQ and quantization-aware training (QAT), one method per run.
// Data: scripts/fetch-fashion-mnist.sh; model: the bundled src/QuantSharp.Cli/Assets/fashion-mnist-cnn.safetensors
// (made by examples/TrainMnist --dataset fashion). Run from the repository root.
//
//   dotnet run -c Release --project examples/LowBitFashion -- --method float|rtn|gptq|qat|qat-select [--qtype int4|int2]
//       [--granularity per-channel|group:G] [--model FILE] [--data DIR] [--calibration 512] [--act-order]
//       [--qat-steps 400] [--qat-lr 1e-4] [--ste] [--validation 500] [--seed 1] [--threads 2] [--save FILE]
//
// Validation split: the last --validation images per class of the TRAINING set (the training set interleaves the
// classes, so these are its last 10 x N images; default 500 per class = 5,000 images). QAT and GPTQ calibration never
// see them; every run prints validation and test accuracy. --method qat-select chooses the QAT setting on validation
// accuracy only (a fixed grid: STE and LSQ, Adam lr 1e-4 and 3e-4, --qat-steps steps; ties keep the earlier setting),
// then evaluates the chosen model once on the test split.
//
// Every quantized variant uses the same recipe: the weight type with --granularity (default per-channel), symmetric,
// every Conv2d and Linear; a layer whose reduction length the packing or group cannot split falls back to int8
// per-channel as the quantizer documents (conv1, K = 9). RTN and GPTQ print the relative output error of each layer on
// held-out images (the first 1,000 test images, each layer fed the float model's input to it).
using System.Diagnostics;
using System.Globalization;
using QuantSharp;
using QuantSharp.Cli.Demo;
using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

string method = "float", qtype = "int4", granularity = "per-channel";
string model = "src/QuantSharp.Cli/Assets/fashion-mnist-cnn.safetensors", dataDir = ".cache/fashion-mnist";
string? savePath = null;
int calibrationImages = 512, qatSteps = 400, seed = 1, threads = 2, validationPerClass = 500;
double qatLr = 1e-4;
bool actOrder = false, ste = false;
for (int i = 0; i < args.Length; i++)
{
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
    switch (args[i])
    {
        case "--method": method = Next().ToLowerInvariant(); break;
        case "--qtype": qtype = Next().ToLowerInvariant(); break;
        case "--granularity": granularity = Next(); break;
        case "--model": model = Next(); break;
        case "--data": dataDir = Next(); break;
        case "--save": savePath = Next(); break;
        case "--calibration": calibrationImages = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--qat-steps": qatSteps = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--qat-lr": qatLr = double.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--validation": validationPerClass = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--seed": seed = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--threads": threads = int.Parse(Next(), CultureInfo.InvariantCulture); break;
        case "--act-order": actOrder = true; break;
        case "--ste": ste = true; break;
        case "-h" or "--help":
            Console.WriteLine("LowBitFashion --method float|rtn|gptq|qat|qat-select [--qtype int4|int2] [--granularity per-channel|group:G] [--model FILE] [--data DIR] " +
                              "[--calibration N] [--act-order] [--qat-steps N] [--qat-lr X] [--ste] [--validation N] [--seed N] [--threads N] [--save FILE]");
            return 0;
        default:
            Console.Error.WriteLine($"Unknown argument '{args[i]}'. Try --help.");
            return 2;
    }
}
if (method is not ("float" or "rtn" or "gptq" or "qat" or "qat-select"))
{
    Console.Error.WriteLine($"Unknown --method '{method}'. Use float, rtn, gptq, qat or qat-select.");
    return 2;
}
if (validationPerClass is < 1 or > 3000)
{
    Console.Error.WriteLine($"--validation {validationPerClass}: give 1..3000 images per class (the training set has 6,000 per class).");
    return 2;
}
string F(string name) => Path.Combine(dataDir, name);
if (!File.Exists(F("t10k-images-idx3-ubyte")))
{
    Console.Error.WriteLine($"Fashion-MNIST not found in {dataDir}. Run scripts/fetch-fashion-mnist.sh first.");
    return 1;
}
if (!File.Exists(model))
{
    Console.Error.WriteLine($"Model {model} not found. Train it with: dotnet run -c Release --project examples/TrainMnist -- --dataset fashion --out {model}");
    return 1;
}

torch.set_num_threads(threads);
torch.manual_seed(seed);
using var trainAll = MnistSet.Load(F("train-images-idx3-ubyte"), F("train-labels-idx1-ubyte"));
// Classes are interleaved in the training file, so its last 10 x N images are the last N of each class.
int fit = trainAll.Count - 10 * validationPerClass;
using var train = trainAll.Subset(Enumerable.Range(0, fit).Select(i => (long)i).ToArray());
using var validation = trainAll.Subset(Enumerable.Range(fit, trainAll.Count - fit).Select(i => (long)i).ToArray());
using var test = MnistSet.Load(F("t10k-images-idx3-ubyte"), F("t10k-labels-idx1-ubyte"));
using var floatModel = MnistNet.Load(model);
floatModel.eval();
var type = QuantTypeInfo.Parse(qtype);
var recipe = new QuantizationRecipe { Type = type, Granularity = Granularity.Parse(granularity), MinElements = 0 };
var clock = Stopwatch.StartNew();

MnistNet result;
string description = "";
QuantSharp.Validation.QuantizationReport? report = null; // the quantizer's validation (rtn, gptq)
switch (method)
{
    case "float":
        result = floatModel;
        description = "float32";
        break;
    case "rtn":
        var rtn = Quantizer.Quantize(floatModel, recipe, () => new MnistNet());
        report = rtn.Report;
        result = rtn.Model;
        description = $"RTN {type.ToName()} {granularity}";
        break;
    case "gptq":
    {
        // Calibration: the first N training images (classes interleaved, so balanced), in batches of 128.
        var batches = Enumerable.Range(0, (calibrationImages + 127) / 128)
            .Select(b => train.ImagesSlice(b * 128, Math.Min(128, calibrationImages - b * 128))).ToList();
        var gptq = Gptq.Quantize(floatModel, recipe, batches, () => new MnistNet(), options: new GptqOptions { ActOrder = actOrder });
        report = gptq.Report;
        result = gptq.Model;
        description = $"GPTQ {type.ToName()} {granularity}{(actOrder ? " act_order" : "")}, {calibrationImages} calibration images";
        break;
    }
    case "qat":
        result = Qat(ste, qatLr);
        description = QatName(ste, qatLr);
        break;
    default:
    {
        // Selection on the validation split only: the grid in a fixed order; the test split is used once, after.
        (bool Ste, double Lr)[] grid = [(true, 1e-4), (true, 3e-4), (false, 1e-4), (false, 3e-4)];
        MnistNet? best = null;
        double bestValidation = -1;
        foreach (var (gridSte, gridLr) in grid)
        {
            var candidate = Qat(gridSte, gridLr);
            double v = validation.Accuracy(candidate);
            Console.WriteLine($"  candidate {QatName(gridSte, gridLr)}: validation accuracy {v * 100:F2}%");
            if (v > bestValidation)
            {
                best?.Dispose();
                (best, bestValidation, description) = (candidate, v, QatName(gridSte, gridLr));
            }
            else candidate.Dispose();
        }
        result = best!;
        description = "chosen on validation: " + description;
        break;
    }
}

// QAT: fine-tune the float model with fake-quantized weights (LSQ: learned scales; STE: observed scales, observer frozen
// after 50 steps), Adam at lr, batches of 64 images of the training part (never the validation part) in a seeded random
// order; then convert.
MnistNet Qat(bool useSte, double lr)
{
    torch.manual_seed(seed);
    var qat = QuantizationAwareTraining.Prepare(floatModel, recipe, () => new MnistNet(),
        options: new FakeQuantizeOptions { Learnable = !useSte, FreezeObserverAfter = useSte ? 50 : null });
    using var optimizer = optim.Adam(qat.parameters(), lr);
    using var perm = randperm(train.Count, generator: new Generator((ulong)seed));
    double lossSum = 0;
    for (int step = 0; step < qatSteps; step++)
    {
        using var scope = NewDisposeScope();
        var idx = perm.narrow(0, step * 64 % (train.Count - 64), 64);
        optimizer.zero_grad();
        var loss = nn.functional.cross_entropy(qat.call(train.Images.index_select(0, idx)), train.Labels.index_select(0, idx));
        loss.backward();
        optimizer.step();
        lossSum += loss.item<float>();
        if ((step + 1) % 100 == 0) Console.WriteLine($"  QAT step {step + 1}/{qatSteps}: mean loss {lossSum / (step + 1):F4} ({clock.Elapsed.TotalSeconds:F0} s)");
    }
    var converted = QuantizationAwareTraining.Convert(qat);
    converted.eval();
    return converted;
}

string QatName(bool useSte, double lr) =>
    $"QAT {type.ToName()} {granularity} ({(useSte ? "STE" : "LSQ")}, {qatSteps} steps x 64 images, Adam lr {lr:G3})";

result.eval();
double validationAccuracy = validation.Accuracy(result);
double accuracy = test.Accuracy(result);
Console.WriteLine($"{description}: validation accuracy {validationAccuracy * 100:F2}% ({validationAccuracy * validation.Count:F0}/{validation.Count}), " +
                  $"test accuracy {accuracy * 100:F2}% ({accuracy * test.Count:F0}/{test.Count}) [{clock.Elapsed.TotalSeconds:F0} s]");
foreach (var m in result.named_modules().Where(m => m.module is QuantizedModule))
    Console.WriteLine($"  {m.name}: {((QuantizedModule)m.module).WeightSpec}");
if (report is not null) Console.WriteLine(report.Format());
if (method is "rtn" or "gptq") PrintLayerErrors(floatModel, result, test.ImagesSlice(0, 1000));
if (savePath is not null && !ReferenceEquals(result, floatModel))
{
    Quantizer.Save(result, savePath);
    Console.WriteLine($"wrote {savePath}");
}
return 0;

// Relative output error ||y_float - y_quant|| / ||y_float|| of each quantized layer on held-out images, every layer fed
// the float model's input to it (so the numbers compare the layers' rounding, not accumulated upstream error).
static void PrintLayerErrors(MnistNet floatModel, MnistNet quantized, Tensor images)
{
    using var scope = NewDisposeScope();
    using var noGrad = no_grad();
    var layers = quantized.named_modules().Where(m => m.module is QuantizedModule).ToDictionary(m => m.name, m => (QuantizedModule)m.module);
    var floats = floatModel.named_modules().Where(m => layers.ContainsKey(m.name)).ToDictionary(m => m.name, m => (nn.Module<Tensor, Tensor>)m.module);
    var inputs = new Dictionary<string, Tensor>();
    var removers = floats.Select(kv => kv.Value.register_forward_pre_hook((_, x) => { inputs[kv.Key] = x.detach().clone().MoveToOuterDisposeScope(); return null!; })).ToList();
    floatModel.call(images);
    foreach (var r in removers) r.remove();
    foreach (var (name, layer) in layers)
    {
        var y = floats[name].call(inputs[name]);
        var e = (y - layer.call(inputs[name])).norm().item<float>() / y.norm().item<float>();
        Console.WriteLine($"  held-out output error {name}: {e:F5}");
    }
}
