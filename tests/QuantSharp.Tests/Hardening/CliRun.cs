using System.CommandLine;
using QuantSharp.Cli;

namespace QuantSharp.Tests.Hardening;

/// <summary>Runs the tool in process as <c>quantsharp</c> does (parse, invoke, top-level handler), capturing both outputs.</summary>
internal static class CliRun
{
    /// <summary>Runs <paramref name="args"/> against the tool's command tree.</summary>
    public static (int Code, string Out, string Err) Run(params string[] args) => Run(Program.BuildRoot(), args);

    /// <summary>Runs <paramref name="args"/> against <paramref name="root"/>; exceptions are not caught by System.CommandLine.</summary>
    public static (int Code, string Out, string Err) Run(Command root, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = TopLevelErrors.Run(root, args, new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false });
        return (code, output.ToString(), error.ToString());
    }
}
