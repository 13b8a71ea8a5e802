// MSBuild inline task (compiled by RoslynCodeTaskFactory, see TorchSharpGlibcxxFix.targets).
// Writes a copy of each given ELF shared library with one GLIBCXX version requirement marked weak
// (VER_FLG_WEAK), so that the dynamic loader accepts an older libstdc++ for it.
// The tests compile this file with ELF_LOGIC_ONLY to test ElfVersionNeeds on the real library.
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

#if !ELF_LOGIC_ONLY
public sealed class MarkGlibcxxVersionWeak : Microsoft.Build.Utilities.Task
{
    /// <summary>The libraries to patch (read only: they usually live in the NuGet cache).</summary>
    [Microsoft.Build.Framework.Required] public Microsoft.Build.Framework.ITaskItem[] Libraries { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();

    /// <summary>The version requirement to mark weak, e.g. GLIBCXX_3.4.32.</summary>
    [Microsoft.Build.Framework.Required] public string Version { get; set; } = "";

    /// <summary>Where the patched copies go (one subfolder per library, from its DestinationSubDirectory).</summary>
    [Microsoft.Build.Framework.Required] public string OutputDirectory { get; set; } = "";

    /// <summary>
    /// One item per input, with the input's metadata: the patched copy, or the input itself when it has no such
    /// requirement or already has it weak.
    /// </summary>
    [Microsoft.Build.Framework.Output] public Microsoft.Build.Framework.ITaskItem[] Patched { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();

    public override bool Execute()
    {
        var result = new List<Microsoft.Build.Framework.ITaskItem>();
        foreach (var library in Libraries)
        {
            string source = library.GetMetadata("FullPath");
            string target = Path.GetFullPath(Path.Combine(OutputDirectory, library.GetMetadata("DestinationSubDirectory"), Path.GetFileName(source)));
            try
            {
                if (!IsUpToDate(source, target) && !WritePatchedCopy(source, target))
                {
                    result.Add(library);
                    continue;
                }
                var copy = new Microsoft.Build.Utilities.TaskItem(target);
                library.CopyMetadataTo(copy);
                result.Add(copy);
            }
            catch (Exception e) when (e is IOException || e is InvalidDataException || e is UnauthorizedAccessException)
            {
                Log.LogWarning("Could not mark " + Version + " weak in a copy of " + source + ": " + e.Message);
                result.Add(library);
            }
        }
        Patched = result.ToArray();
        return !Log.HasLoggedErrors;
    }

    private static bool IsUpToDate(string source, string target) =>
        File.Exists(target) && File.GetLastWriteTimeUtc(target) >= File.GetLastWriteTimeUtc(source);

    /// <summary>Writes the patched copy (a new file, renamed into place); false when there was nothing to mark.</summary>
    private bool WritePatchedCopy(string source, string target)
    {
        byte[] elf = File.ReadAllBytes(source);
        if (ElfVersionNeeds.MarkWeak(elf, Version) == 0) return false;
        System.IO.Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        string tmp = target + ".weakver.tmp";
        File.WriteAllBytes(tmp, elf);
        // APIs of netstandard2.0 only: Visual Studio's MSBuild compiles inline tasks for .NET Framework.
        if (File.Exists(target)) File.Replace(tmp, target, null);
        else File.Move(tmp, target);
        Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Normal, "Marked " + Version + " weak in " + target);
        return true;
    }
}
#endif

/// <summary>Reads and edits the version requirements (.gnu.version_r) of an ELF64 little-endian file.</summary>
public static class ElfVersionNeeds
{
    private const ushort VerFlagWeak = 0x2;
    private const uint ShtGnuVerneed = 0x6ffffffe;

    /// <summary>Sets VER_FLG_WEAK on every requirement named <paramref name="version"/>; returns how many changed.</summary>
    public static int MarkWeak(byte[] elf, string version)
    {
        int changed = 0;
        foreach (var entry in Read(elf))
        {
            ushort flags = (ushort)U16(elf, entry.FlagsOffset);
            if (entry.Name != version || (flags & VerFlagWeak) != 0) continue;
            flags |= VerFlagWeak;
            elf[entry.FlagsOffset] = (byte)flags;
            elf[entry.FlagsOffset + 1] = (byte)(flags >> 8);
            changed++;
        }
        return changed;
    }

    /// <summary>
    /// Each version requirement (Vernaux entry) with the file offset of its 16-bit vna_flags field;
    /// empty for anything but an ELF64 little-endian file.
    /// </summary>
    public static List<(string Name, int FlagsOffset)> Read(byte[] elf)
    {
        var result = new List<(string, int)>();
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F') return result;
        if (elf[4] != 2 || elf[5] != 1) return result;
        int shoff = checked((int)U64(elf, 0x28));
        int shentsize = U16(elf, 0x3A), shnum = U16(elf, 0x3C);
        for (int i = 0; i < shnum; i++)
        {
            int sh = shoff + i * shentsize;
            if (U32(elf, sh + 4) != ShtGnuVerneed) continue;
            int vn = checked((int)U64(elf, sh + 0x18));
            int link = (int)U32(elf, sh + 0x28);   // section index of the names' string table
            int count = (int)U32(elf, sh + 0x2C);  // sh_info: number of Verneed entries
            int strtab = checked((int)U64(elf, shoff + link * shentsize + 0x18));
            for (int n = 0; n < count; n++)
            {
                int auxCount = U16(elf, vn + 2);
                int aux = vn + (int)U32(elf, vn + 8);
                for (int a = 0; a < auxCount; a++)
                {
                    result.Add((CString(elf, strtab + (int)U32(elf, aux + 8)), aux + 4));
                    uint next = U32(elf, aux + 12);
                    if (next == 0) break;
                    aux += (int)next;
                }
                uint vnNext = U32(elf, vn + 12);
                if (vnNext == 0) break;
                vn += (int)vnNext;
            }
        }
        return result;
    }

    /// <summary>Reads a little-endian 16-bit value.</summary>
    public static int U16(byte[] b, int o) => b[o] | (b[o + 1] << 8);

    private static uint U32(byte[] b, int o) => (uint)(b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24));

    private static ulong U64(byte[] b, int o) => U32(b, o) | ((ulong)U32(b, o + 4) << 32);

    private static string CString(byte[] b, int o)
    {
        int end = Array.IndexOf(b, (byte)0, o);
        if (end < 0) throw new InvalidDataException("unterminated string in ELF string table");
        return Encoding.ASCII.GetString(b, o, end - o);
    }
}
