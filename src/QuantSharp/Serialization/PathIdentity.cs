using System.Runtime.InteropServices;

namespace QuantSharp.Serialization;

/// <summary>What a path names, without following a final symbolic link.</summary>
internal enum EntryKind
{
    /// <summary>Nothing exists there.</summary>
    Missing,
    /// <summary>A regular file.</summary>
    RegularFile,
    /// <summary>A directory.</summary>
    Directory,
    /// <summary>A symbolic link (to anything, or dangling).</summary>
    SymbolicLink,
    /// <summary>A device, FIFO or socket.</summary>
    Other,
}

/// <summary>
/// Path identity for the promise "the input is only read, in any spelling": real paths with every component's
/// symbolic link resolved (POSIX rules: <c>link/..</c> is the parent of the link's target), plus device and inode
/// numbers on Unix (which also see through bind mounts and hard links).
/// </summary>
internal static class PathIdentity
{
    private const int MaxLinks = 40; // as Linux's ELOOP limit

    /// <summary>Ordinal, or ordinal ignoring case where file systems usually ignore it (Windows, macOS).</summary>
    public static StringComparison Comparison { get; } =
        OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;

    /// <summary>
    /// The absolute path with every symbolic link resolved, component by component; components that do not exist
    /// yet are appended as given (so an output path that is still to be created resolves too).
    /// </summary>
    public static string RealPath(string path)
    {
        string full = Path.IsPathRooted(path) ? path : Path.Combine(Directory.GetCurrentDirectory(), path);
        string root = Path.GetPathRoot(full)!;
        var pending = new Stack<string>(full[root.Length..]
            .Split([Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar], StringSplitOptions.RemoveEmptyEntries).Reverse());
        string current = root;
        int links = 0;
        bool missing = false;
        while (pending.Count > 0)
        {
            string part = pending.Pop();
            if (part == ".") continue;
            if (part == "..")
            {
                current = Path.GetDirectoryName(current) ?? current;
                continue;
            }
            string next = Path.Combine(current, part);
            string? target = missing ? null : LinkTarget(next, out missing);
            if (target is null)
            {
                current = next;
                continue;
            }
            if (++links > MaxLinks) throw new IOException($"Too many levels of symbolic links resolving '{path}'.");
            // Resolve the target's components in place of this one (relative targets start at the link's folder).
            string targetRoot = Path.GetPathRoot(target) ?? "";
            if (targetRoot.Length > 0) current = targetRoot;
            foreach (string t in target[targetRoot.Length..]
                .Split([Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar], StringSplitOptions.RemoveEmptyEntries).Reverse())
                pending.Push(t);
        }
        return current;
    }

    /// <summary>
    /// The absolute path with every component but the last resolved (see <see cref="RealPath"/>): what a rename or
    /// an open of the path acts on, with a symbolic link in the last place kept as a link. Trailing separators are
    /// ignored; a last component of <c>.</c> or <c>..</c> is resolved.
    /// </summary>
    public static string ResolveParent(string path)
    {
        string trimmed = path.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        if (trimmed.Length == 0) return RealPath(path); // the root
        string name = Path.GetFileName(trimmed);
        if (name is "." or ".." || Path.GetDirectoryName(Path.IsPathRooted(trimmed) ? trimmed : Path.Combine(".", trimmed)) is not { } parent)
            return RealPath(trimmed);
        return Path.Combine(RealPath(parent), name);
    }

    /// <summary>The link's own target text (null when <paramref name="path"/> is not a link), and whether nothing exists there.</summary>
    private static string? LinkTarget(string path, out bool missing)
    {
        var info = new FileInfo(path);
        missing = false;
        try
        {
            if (info.LinkTarget is { } target) return target;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        missing = !info.Exists && !Directory.Exists(path);
        return null;
    }

    /// <summary>True when <paramref name="path"/> is <paramref name="folder"/> or lies inside it (both real paths).</summary>
    public static bool IsSameOrInside(string path, string folder)
    {
        string f = folder.TrimEnd(Path.DirectorySeparatorChar);
        return string.Equals(path, f, Comparison)
            || path.StartsWith(f + Path.DirectorySeparatorChar, Comparison);
    }

    /// <summary>What <paramref name="path"/> names, without following a final symbolic link.</summary>
    public static EntryKind Kind(string path)
    {
        if (Native.Status(path, follow: false) is { } st)
        {
            return (st.Mode & 0xF000) switch
            {
                0x8000 => EntryKind.RegularFile,
                0x4000 => EntryKind.Directory,
                0xA000 => EntryKind.SymbolicLink,
                _ => EntryKind.Other,
            };
        }
        var info = new FileInfo(path);
        if (info.LinkTarget is not null) return EntryKind.SymbolicLink;
        if (Directory.Exists(path)) return EntryKind.Directory;
        if (info.Exists) return EntryKind.RegularFile;
        return Native.Available && File.Exists(path) ? EntryKind.Other : EntryKind.Missing;
    }

    /// <summary>Device and inode of what <paramref name="path"/> finally names (null where unknown: Windows, missing).</summary>
    public static (long Device, long Inode)? FileId(string path)
        => Native.Status(path, follow: true) is { } st ? (st.Device, st.Inode) : null;

    /// <summary>
    /// True when <paramref name="a"/> and <paramref name="b"/> are the same file or folder: same real path, or the
    /// same device and inode.
    /// </summary>
    public static bool Same(string a, string b)
    {
        if (string.Equals(RealPath(a), RealPath(b), Comparison)) return true;
        return FileId(a) is { } ia && FileId(b) is { } ib && ia == ib;
    }

    /// <summary>
    /// True when <paramref name="path"/> (existing or not) lies inside <paramref name="folder"/> or is it: by real
    /// paths, or by the device and inode of each existing ancestor.
    /// </summary>
    public static bool IsWithin(string path, string folder)
    {
        string real = RealPath(path), realFolder = RealPath(folder);
        if (IsSameOrInside(real, realFolder)) return true;
        if (FileId(realFolder) is not { } id) return false;
        for (string? p = real; p is not null; p = Path.GetDirectoryName(p))
        {
            if (FileId(p) == id) return true;
        }
        return false;
    }

    /// <summary>
    /// <c>lstat</c>/<c>stat</c> through .NET's own native shim (libSystem.Native, shipped with every .NET runtime on
    /// Unix), since the BCL exposes neither the file type nor the inode. Its <c>FileStatus</c> layout (mode at offset 4,
    /// size at 16, device at 88, inode at 104) is checked once against a directory and a file of known size before use.
    /// </summary>
    private static class Native
    {
        [DllImport("libSystem.Native", EntryPoint = "SystemNative_LStat")]
        private static extern int LStat([MarshalAs(UnmanagedType.LPUTF8Str)] string path, byte[] status);

        [DllImport("libSystem.Native", EntryPoint = "SystemNative_Stat")]
        private static extern int Stat([MarshalAs(UnmanagedType.LPUTF8Str)] string path, byte[] status);

        private static readonly Lazy<bool> s_available = new(SelfCheck);

        public static bool Available => s_available.Value;

        public readonly record struct FileStatus(int Mode, long Size, long Device, long Inode);

        public static FileStatus? Status(string path, bool follow)
        {
            if (!Available) return null;
            return Call(path, follow);
        }

        private static FileStatus? Call(string path, bool follow)
        {
            var buffer = new byte[256];
            int rc = follow ? Stat(path, buffer) : LStat(path, buffer);
            if (rc != 0) return null;
            return new FileStatus(BitConverter.ToInt32(buffer, 4), BitConverter.ToInt64(buffer, 16),
                BitConverter.ToInt64(buffer, 88), BitConverter.ToInt64(buffer, 104));
        }

        private static bool SelfCheck()
        {
            if (OperatingSystem.IsWindows()) return false;
            string? probe = null;
            try
            {
                probe = Path.Combine(Path.GetTempPath(), $".qs-stat-probe-{Environment.ProcessId}-{Guid.NewGuid():N}");
                File.WriteAllBytes(probe, new byte[4099]);
                var dir = Call(Path.GetTempPath(), follow: true);
                var file = Call(probe, follow: false);
                return dir is { Mode: var dm } && (dm & 0xF000) == 0x4000
                    && file is { Mode: var fm, Size: 4099 } f && (fm & 0xF000) == 0x8000 && f.Inode != 0;
            }
            catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException or IOException or UnauthorizedAccessException)
            {
                return false;
            }
            finally
            {
                try { if (probe is not null) File.Delete(probe); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            }
        }
    }
}
