using System.Diagnostics;
using System.Globalization;

namespace QuantSharp.Serialization;

/// <summary>
/// A hidden temporary folder next to an output path, where a run writes everything before renaming it into place.
/// Its name, <c>.NAME.qs-tmp-PID-GUID</c>, carries the owning process id, so that a later run for the same output
/// removes folders left by runs that were killed (<c>kill -9</c>, power loss): those whose process is gone.
/// Disposing removes the folder unless it was promoted.
/// </summary>
internal sealed class AtomicOutput : IDisposable
{
    private readonly string _output;

    private AtomicOutput(string output, string tempFolder)
    {
        _output = output;
        TempFolder = tempFolder;
    }

    /// <summary>The temporary folder (created).</summary>
    public string TempFolder { get; }

    /// <summary>Creates the output's parent folder and a fresh temporary folder, after removing stale ones.</summary>
    public static AtomicOutput Create(string output)
    {
        string parent = Path.GetDirectoryName(output)!;
        Directory.CreateDirectory(parent);
        RemoveStale(output);
        string temp = Path.Combine(parent, $"{Prefix(output)}{Environment.ProcessId.ToString(CultureInfo.InvariantCulture)}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temp);
        return new AtomicOutput(output, temp);
    }

    private static string Prefix(string output) => $".{Path.GetFileName(output)}.qs-tmp-";

    /// <summary>
    /// Removes temporary folders of <paramref name="output"/> whose owning process no longer runs (on this machine).
    /// Only real folders are removed (never a symbolic link's target); errors are ignored.
    /// </summary>
    /// <returns>The folders removed.</returns>
    public static IReadOnlyList<string> RemoveStale(string output)
    {
        var removed = new List<string>();
        string parent = Path.GetDirectoryName(output)!;
        string prefix = Prefix(output);
        if (!Directory.Exists(parent)) return removed;
        IEnumerable<string> candidates;
        try { candidates = Directory.EnumerateDirectories(parent, prefix + "*").ToList(); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { return removed; }
        foreach (string dir in candidates)
        {
            string rest = Path.GetFileName(dir)[prefix.Length..];
            int dash = rest.IndexOf('-', StringComparison.Ordinal);
            if (dash <= 0 || !int.TryParse(rest[..dash], NumberStyles.None, CultureInfo.InvariantCulture, out int pid)) continue;
            if (pid == Environment.ProcessId || IsRunning(pid)) continue;
            if (PathIdentity.Kind(dir) != EntryKind.Directory) continue;
            try
            {
                Directory.Delete(dir, recursive: true);
                removed.Add(dir);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
        }
        return removed;
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    /// <summary>Whether the temporary content has been renamed into place.</summary>
    public bool Promoted { get; private set; }

    /// <summary>
    /// Renames the temporary content into place: the file <paramref name="fileName"/> inside it (a single-file
    /// output), or the whole folder. An existing output (already checked to be a replaceable regular file or real
    /// folder) is replaced; a folder is first moved aside, so a failure puts it back.
    /// </summary>
    public void Promote(string? fileName)
    {
        if (fileName is not null)
        {
            File.Move(Path.Combine(TempFolder, fileName), _output, overwrite: true);
            Promoted = true;
            Directory.Delete(TempFolder, recursive: true);
            return;
        }
        string? aside = null;
        if (Directory.Exists(_output))
        {
            if (!Directory.EnumerateFileSystemEntries(_output).Any()) Directory.Delete(_output);
            else
            {
                aside = Path.Combine(Path.GetDirectoryName(_output)!, $"{Prefix(_output)}{Environment.ProcessId.ToString(CultureInfo.InvariantCulture)}-old-{Guid.NewGuid():N}");
                Directory.Move(_output, aside);
            }
        }
        try { Directory.Move(TempFolder, _output); }
        catch when (aside is not null)
        {
            Directory.Move(aside, _output);
            throw;
        }
        Promoted = true;
        if (aside is not null)
        {
            try { Directory.Delete(aside, recursive: true); }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
        }
    }

    /// <summary>Removes the temporary folder if it is still there.</summary>
    public void Dispose()
    {
        try { if (Directory.Exists(TempFolder)) Directory.Delete(TempFolder, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
