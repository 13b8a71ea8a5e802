using System.CommandLine;

namespace QuantSharp.Cli;

/// <summary>The <c>quantsharp</c> command line.</summary>
public static class Program
{
    /// <summary>Entry point.</summary>
    public static int Main(string[] args) => BuildRoot().Parse(args).Invoke();

    /// <summary>Builds the command tree (also used by tests).</summary>
    public static RootCommand BuildRoot()
    {
        var root = new RootCommand("QuantSharp: quantize TorchSharp models and safetensors checkpoints to int8/int4/fp16/bf16.");
        var version = new Command("version", "Print QuantSharp, TorchSharp and libtorch versions.");
        version.SetAction(_ =>
        {
            Console.WriteLine($"QuantSharp {typeof(QuantType).Assembly.GetName().Version}");
            Console.WriteLine($"TorchSharp {typeof(TorchSharp.torch).Assembly.GetName().Version}");
            using var t = TorchSharp.torch.ones(2, 2);
            Console.WriteLine($"libtorch loaded: ones(2,2).sum() = {t.sum().item<float>()}");
            return 0;
        });
        root.Subcommands.Add(version);
        // One file per command under Commands/, each with a static Create(); add them here, one line each.
        root.Subcommands.Add(Commands.DemoCommand.Create());
        root.Subcommands.Add(Commands.ObserveCommand.Create());
        root.Subcommands.Add(Commands.QuantizeCommand.Create());
        root.Subcommands.Add(Commands.InspectCommand.Create());
        root.Subcommands.Add(Commands.ValidateCommand.Create());
        root.Subcommands.Add(Commands.BenchCommand.Create());
        root.Subcommands.Add(Commands.CalibrateCommand.Create());
        return root;
    }
}
