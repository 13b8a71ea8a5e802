namespace QuantSharp.Tests.NativeLoading;

/// <summary>The build's ELF patch (build/MarkGlibcxxVersionWeak.cs, build/TorchSharpGlibcxxFix.targets) on TorchSharp's real native library.</summary>
public class GlibcxxPatchTests
{
    private const string Version = "GLIBCXX_3.4.32";
    private const string Lib = "runtimes/linux-x64/native/libLibTorchSharp.so";

    private static string NuGetCacheCopy()
    {
        string root = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        return Path.Combine(root, "torchsharp", "0.107.0", Lib);
    }

    private static ushort FlagsOf(byte[] elf, string name)
    {
        var entry = ElfVersionNeeds.Read(elf).Single(e => e.Name == name);
        return (ushort)ElfVersionNeeds.U16(elf, entry.FlagsOffset);
    }

    [Fact]
    public void MarksExactlyTheOneVersionRequirementWeak()
    {
        if (!OperatingSystem.IsLinux()) return; // the library only exists in the Linux package
        byte[] original = File.ReadAllBytes(NuGetCacheCopy());
        Assert.Equal(0, FlagsOf(original, Version) & 0x2); // the package ships it as a hard requirement

        byte[] patched = (byte[])original.Clone();
        Assert.Equal(1, ElfVersionNeeds.MarkWeak(patched, Version));
        Assert.Equal(0x2, FlagsOf(patched, Version) & 0x2);
        // One byte changes (the low byte of vna_flags); the other requirements keep their flags.
        Assert.Single(Enumerable.Range(0, original.Length), i => original[i] != patched[i]);
        foreach (var (_, offset) in ElfVersionNeeds.Read(original).Where(e => e.Name != Version))
            Assert.Equal(ElfVersionNeeds.U16(original, offset), ElfVersionNeeds.U16(patched, offset));
        // Idempotent.
        Assert.Equal(0, ElfVersionNeeds.MarkWeak(patched, Version));
    }

    [Fact]
    public void BuildOutputHasThePatchedCopyAndTheNuGetCacheKeepsTheOriginal()
    {
        // Every build carries the Linux library (runtimes/linux-x64), patched whatever the build machine.
        byte[] output = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, Lib));
        byte[] cache = File.ReadAllBytes(NuGetCacheCopy());
        Assert.Equal(0x2, FlagsOf(output, Version) & 0x2); // on every machine: the weak flag is harmless where libstdc++ has it
        Assert.Equal(0, FlagsOf(cache, Version) & 0x2);    // the NuGet cache is never modified
        Assert.Single(Enumerable.Range(0, output.Length), i => output[i] != cache[i]);
    }
}
