using System.CommandLine;
using System.CommandLine.Help;

namespace QuantSharp.Cli;

/// <summary>The <c>quantsharp</c> command line.</summary>
public static class Program
{
    /// <summary>Entry point: parse errors and every failure end in an <c>error:</c> line and exit code 2 (1: validation failed), no stack trace.</summary>
    public static int Main(string[] args) => TopLevelErrors.Run(BuildRoot(), args);

    /// <summary>The name users type: the installed tool's command (<c>ToolCommandName</c> in QuantSharp.Cli.csproj), shown in usage lines.</summary>
    public const string CommandName = "quantsharp";

    /// <summary>Builds the command tree (also used by tests); every command's action is wrapped by the top-level error handler.</summary>
    /// <remarks>A plain <see cref="Command"/> named <see cref="CommandName"/> with <see cref="RootCommand"/>'s help and version
    /// options: a <see cref="RootCommand"/> takes its name from the entry assembly's file, so every usage line said
    /// <c>QuantSharp.Cli</c>, also for the installed <c>quantsharp</c> tool.</remarks>
    public static Command BuildRoot()
    {
        var root = new Command(CommandName, "QuantSharp: quantize TorchSharp models and safetensors checkpoints to int8, int4, int2, float16 or bfloat16.")
        {
            Options = { new HelpOption(), new VersionOption() },
        };
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
