using System.CommandLine;

namespace QuantSharp.Cli;

/// <summary>The <c>quantsharp</c> command line.</summary>
public static class Program
{
    /// <summary>Entry point: parse errors and every failure end in an <c>error:</c> line and exit code 2 (1: validation failed), no stack trace.</summary>
    public static int Main(string[] args) => TopLevelErrors.Run(BuildRoot(), args);

    /// <summary>Builds the command tree (also used by tests); every command's action is wrapped by the top-level error handler.</summary>
    public static RootCommand BuildRoot()
    {
        var root = new RootCommand("QuantSharp: quantize TorchSharp models and safetensors checkpoints to int8, int4, int2, float16 or bfloat16.");
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
        // Last: wraps every command above (and their subcommands) so that no exception reaches the user as a stack trace.
        return TopLevelErrors.Guard(root);
    }
}
