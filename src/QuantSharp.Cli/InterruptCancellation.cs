using System.Runtime.InteropServices;

namespace QuantSharp.Cli;

/// <summary>
/// Turns the first SIGINT (Ctrl+C) or SIGTERM into a cancellation of the running command, so that it stops between
/// chunks and removes its temporary files before the process exits; a second signal ends the process at once (a
/// later run then removes the leftover temporary folder, whose owning process is gone).
/// </summary>
internal sealed class InterruptCancellation : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly List<PosixSignalRegistration> _registrations = [];

    public InterruptCancellation()
    {
        foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM })
        {
            try { _registrations.Add(PosixSignalRegistration.Create(signal, Handle)); }
            catch (PlatformNotSupportedException) { }
        }
    }

    /// <summary>Cancelled by the first signal.</summary>
    public CancellationToken Token => _cts.Token;

    /// <summary>The signal received (SIGINT or SIGTERM), or null.</summary>
    public string? Signal { get; private set; }

    private void Handle(PosixSignalContext context)
    {
        if (_cts.IsCancellationRequested) return; // second signal: the default action (terminate)
        context.Cancel = true;
        Signal = context.Signal == PosixSignal.SIGINT ? "SIGINT" : "SIGTERM";
        _cts.Cancel();
    }

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _cts.Dispose();
    }
}
