using System.Text.Json;
using QuantSharp.Serialization;

namespace QuantSharp.Tests;

/// <summary>Paths to the independent reference data in <c>../shared/reference</c> (read-only).</summary>
internal static class Reference
{
    /// <summary>The repository root (the folder holding QuantSharp.slnx).</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary><c>../shared/reference</c> beside the repository.</summary>
    public static string Dir => s_dir.Value;

    private static readonly Lazy<string> s_dir = new(() => Locate(RepoRoot));

    /// <summary><c>../shared/reference</c> beside <paramref name="repoRoot"/>; a clear message when it is missing (a clone
    /// without the reference data beside it would otherwise fail hundreds of tests with "Could not find a part of the path").</summary>
    internal static string Locate(string repoRoot)
    {
        string dir = System.IO.Path.GetFullPath(System.IO.Path.Combine(repoRoot, "..", "shared", "reference"));
        if (!Directory.Exists(System.IO.Path.Combine(dir, "pytorch")))
            throw new DirectoryNotFoundException(
                $"The reference data is missing: the tests compare against PyTorch's and ONNX Runtime's outputs in ../shared/reference " +
                $"beside the repository, expected at '{dir}'. Clone the repository next to that folder (as CI does) and run the tests again.");
        return dir;
    }

    public static string PyTorchDir => System.IO.Path.Combine(Dir, "pytorch");
    public static string CorpusDir => System.IO.Path.Combine(Dir, "safetensors-corpus");

    // Python's json writes bare Infinity/NaN (e.g. sqnr_db of an exact round trip); quote them so that
    // System.Text.Json reads them, and read such numbers with GetSingleValue below.
    private static readonly Lazy<JsonDocument> s_json = new(() => JsonDocument.Parse(
        System.Text.RegularExpressions.Regex.Replace(
            File.ReadAllText(System.IO.Path.Combine(PyTorchDir, "reference.json")),
            @"(?<=[:\[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])", "\"$1\"")));
    private static readonly Lazy<JsonDocument> s_groupsJson = new(() =>
        JsonDocument.Parse(File.ReadAllBytes(System.IO.Path.Combine(PyTorchDir, "groups.json"))));

    /// <summary><c>pytorch/reference.json</c>.</summary>
    public static JsonElement Json => s_json.Value.RootElement;

    /// <summary><c>pytorch/groups.json</c>.</summary>
    public static JsonElement GroupsJson => s_groupsJson.Value.RootElement;

    /// <summary>Opens <c>pytorch/reference.safetensors</c> (dispose it).</summary>
    public static SafetensorsFile OpenTensors() => SafetensorsFile.Open(System.IO.Path.Combine(PyTorchDir, "reference.safetensors"));

    /// <summary>Opens <c>pytorch/groups.safetensors</c> (dispose it).</summary>
    public static SafetensorsFile OpenGroups() => SafetensorsFile.Open(System.IO.Path.Combine(PyTorchDir, "groups.safetensors"));

    /// <summary>Reads a JSON number, or the strings "Infinity", "-Infinity", "NaN".</summary>
    public static float GetSingleValue(this JsonElement e) => e.ValueKind == JsonValueKind.String
        ? float.Parse(e.GetString()!, System.Globalization.CultureInfo.InvariantCulture)
        : e.GetSingle();

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "QuantSharp.slnx"))) return dir.FullName;
        }
        throw new InvalidOperationException("Cannot find the repository root (QuantSharp.slnx) above " + AppContext.BaseDirectory);
    }
}
