using System.CommandLine;
using System.CommandLine.Invocation;
using System.Text.Json;
using System.Text.RegularExpressions;
using QuantSharp.Validation;

namespace QuantSharp.Cli;

/// <summary>
/// The top-level error handler of every command: whatever a command throws ends as one <c>error: ...</c> line on the
/// error output and an exit code (2: bad input, options or I/O; 1: validation failed, CheckpointValidationException or QuantizationValidationException; 130: interrupted), never a stack
/// trace. <see cref="Guard"/> wraps every command of the tree, so commands added later get it too. Set
/// <c>QUANTSHARP_DEBUG=1</c> to also print the stack trace of an unexpected exception.
/// </summary>
internal static partial class TopLevelErrors
{
    /// <summary>Wraps the action of <paramref name="command"/> and of all its subcommands; returns the command.</summary>
    public static T Guard<T>(T command) where T : Command
    {
        switch (command.Action)
        {
            case SynchronousCommandLineAction sync and not GuardedAction:
                command.Action = new GuardedAction(sync);
                break;
            case AsynchronousCommandLineAction async and not GuardedAsyncAction:
                command.Action = new GuardedAsyncAction(async);
                break;
        }
        foreach (var sub in command.Subcommands) Guard(sub);
        return command;
    }

    /// <summary>Parses and runs a command line as <c>quantsharp</c> does: parse errors exit 2 (bad options), as do failures.</summary>
    public static int Run(Command root, string[] args, InvocationConfiguration? configuration = null)
    {
        var parseResult = root.Parse(args);
        int code = configuration is null ? parseResult.Invoke() : parseResult.Invoke(configuration);
        return parseResult.Errors.Count > 0 && code != 0 ? CheckpointConsole.BadInput : code;
    }

    /// <summary>Writes the message for <paramref name="ex"/> and returns the exit code.</summary>
    internal static int Report(ParseResult parseResult, Exception ex)
    {
        var (message, code) = Describe(ex);
        if (code == CheckpointConsole.BadInput && !IsExpected(ex) && Environment.GetEnvironmentVariable("QUANTSHARP_DEBUG") == "1")
            message += Environment.NewLine + ex;
        return CheckpointConsole.Fail(parseResult, message, code);
    }

    /// <summary>The one-line message and exit code for an exception that reached the top.</summary>
    internal static (string Message, int Code) Describe(Exception ex)
    {
        if (ex is TypeInitializationException { InnerException: { } inner }) ex = inner;
        if (IsNativeLoadFailure(ex))
        {
            return ("libtorch, the native library of TorchSharp, could not be loaded, so this command cannot run. " +
                "Fix: run QuantSharp with the TorchSharp-cpu 0.107.0 package (or a TorchSharp-cuda-* package of the same version) beside it " +
                "(the 'quantsharp' tool and 'dotnet run' bring it); on Debian 12 or Ubuntu 22.04 the system libstdc++ is older than libtorch asks " +
                "(GLIBCXX_3.4.32): build or install through this repository (its build gives the output a patched copy, build/TorchSharpGlibcxxFix.targets) " +
                "or install a newer libstdc++6. Details: " + FirstLine(ex.Message), CheckpointConsole.BadInput);
        }
        return ex switch
        {
            CheckpointValidationException v => (v.Message, CheckpointConsole.ValidationFailed),
            QuantizationValidationException v => (v.Message, CheckpointConsole.ValidationFailed),
            OperationCanceledException => ("Interrupted; nothing was written and the temporary files were removed.", CheckpointConsole.Interrupted),
            _ when IsExpected(ex) => (Clean(ex.Message), CheckpointConsole.BadInput),
            _ => ($"unexpected {ex.GetType().Name}: {Clean(ex.Message)} This is a QuantSharp bug; please report it with the command line " +
                  "(QUANTSHARP_DEBUG=1 prints the stack trace).", CheckpointConsole.BadInput),
        };
    }

    /// <summary>Exceptions that describe bad input, options or I/O (their message is meant for the user): the library's
    /// family (<see cref="QuantizationException"/>), .NET argument and I/O errors, and the demo readers' <see cref="InvalidDataException"/>.</summary>
    private static bool IsExpected(Exception ex) => ex is QuantizationException or ArgumentException or InvalidDataException or IOException or UnauthorizedAccessException
        or NotSupportedException or KeyNotFoundException or JsonException
        or FormatException or OverflowException;

    /// <summary>True for TorchSharp's failure to load libtorch (LibTorchSharp, libtorch, a missing GLIBCXX version).</summary>
    internal static bool IsNativeLoadFailure(Exception ex) => ex is DllNotFoundException or BadImageFormatException or EntryPointNotFoundException
        || (ex is NotSupportedException or TypeInitializationException && NativeLoadText().IsMatch(ex.Message));

    [GeneratedRegex("LoadNativeBackend|LibTorchSharp|libtorch|GLIBCXX", RegexOptions.IgnoreCase)]
    private static partial Regex NativeLoadText();

    private static string Clean(string message) => Regex.Replace(message, @" \(Parameter '[^']*'\)", "");

    private static string FirstLine(string message)
    {
        int cut = message.IndexOfAny(['\r', '\n']);
        return (cut < 0 ? message : message[..cut]).Trim();
    }

    private sealed class GuardedAction(SynchronousCommandLineAction inner) : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult)
        {
            try { return inner.Invoke(parseResult); }
            catch (Exception ex) { return Report(parseResult, ex); }
        }
    }

    private sealed class GuardedAsyncAction(AsynchronousCommandLineAction inner) : AsynchronousCommandLineAction
    {
        public override async Task<int> InvokeAsync(ParseResult parseResult, CancellationToken cancellationToken = default)
        {
            try { return await inner.InvokeAsync(parseResult, cancellationToken).ConfigureAwait(false); }
            catch (Exception ex) { return Report(parseResult, ex); }
        }
    }
}
