using System.Reflection;
using QuantSharp.Selection;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>One submodule of a model: its dotted name, the module, its parent and its name within the parent.</summary>
internal sealed record ModuleEntry(string Name, nn.Module Module, nn.Module Parent, string LocalName);

/// <summary>Walking a TorchSharp module tree and swapping submodules (TorchSharp has no replace API).</summary>
internal static class ModuleTree
{
    private const BindingFlags AllInstance = BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;

    /// <summary>Every submodule, depth first in registration order, with dotted names (the root itself is not listed).</summary>
    public static List<ModuleEntry> Walk(nn.Module root)
    {
        var list = new List<ModuleEntry>();
        Visit(root, "", list);
        return list;
    }

    private static void Visit(nn.Module parent, string prefix, List<ModuleEntry> list)
    {
        foreach (var (local, child) in parent.named_children())
        {
            if (child is null) continue;
            string name = prefix.Length == 0 ? local : prefix + "." + local;
            list.Add(new ModuleEntry(name, child, parent, local));
            Visit(child, name, list);
        }
    }

    /// <summary>
    /// Whether <paramref name="root"/> is itself a layer that would be replaced (<paramref name="replaced"/>) with none
    /// inside it: a bare layer, which has no parent to be replaced in.
    /// </summary>
    public static bool IsBareLayer(nn.Module root, Func<nn.Module, bool> replaced) =>
        replaced(root) && !Walk(root).Any(e => replaced(e.Module));

    /// <summary>Why <paramref name="entry"/> cannot be swapped for a module of type <paramref name="replacement"/>, or null.</summary>
    public static string? CannotReplace(ModuleEntry entry, Type replacement)
    {
        var parent = entry.Parent;
        if (parent is TorchSharp.Modules.Sequential)
            return typeof(nn.IModule<Tensor, Tensor>).IsAssignableFrom(replacement) ? null
                : $"its container is a Sequential, which holds only Module<Tensor, Tensor> layers, not a {replacement.Name}";
        var pt = parent.GetType();
        if (pt.IsGenericType && pt.GetGenericTypeDefinition() == typeof(TorchSharp.Modules.ModuleList<>)
            || pt.IsGenericType && pt.GetGenericTypeDefinition() == typeof(TorchSharp.Modules.ModuleDict<>))
        {
            var t = pt.GetGenericArguments()[0];
            return t.IsAssignableFrom(replacement) ? null
                : $"its container is {TypeName(pt)}, which cannot hold a {replacement.Name}; declare it as ModuleList<Module<Tensor, Tensor>> / ModuleDict<Module<Tensor, Tensor>>";
        }
        var fields = FieldsHolding(parent, entry.Module);
        if (fields.Count == 0)
            return $"no field of {pt.Name} refers to it (the forward pass could not be redirected)";
        foreach (var f in fields)
        {
            if (!f.FieldType.IsAssignableFrom(replacement))
                return $"field '{f.Name}' of {pt.Name} is declared as {TypeName(f.FieldType)}; declare it as {TypeName(ModuleBase(replacement))} so that it can hold a {replacement.Name}";
        }
        return null;
    }

    /// <summary>Swaps <paramref name="entry"/>'s module for <paramref name="replacement"/> in its parent (fields and registration).</summary>
    public static void Replace(ModuleEntry entry, nn.Module replacement)
    {
        string? why = CannotReplace(entry, replacement.GetType());
        if (why != null) throw new InvalidOperationException($"Cannot replace layer '{entry.Name}': {why}.");
        var parent = entry.Parent;
        switch (parent)
        {
            case TorchSharp.Modules.Sequential seq:
            {
                var names = (List<string>)GetField(typeof(TorchSharp.Modules.Sequential), "_names").GetValue(seq)!;
                var modules = (List<nn.IModule<Tensor, Tensor>>)GetField(typeof(TorchSharp.Modules.Sequential), "_modules").GetValue(seq)!;
                int i = names.IndexOf(entry.LocalName);
                if (i < 0) throw new InvalidOperationException($"Sequential holding '{entry.Name}' has no entry '{entry.LocalName}'.");
                modules[i] = (nn.IModule<Tensor, Tensor>)replacement;
                Reregister(parent, entry.LocalName, replacement);
                return;
            }
        }
        var pt = parent.GetType();
        if (pt.IsGenericType && pt.GetGenericTypeDefinition() == typeof(TorchSharp.Modules.ModuleList<>))
        {
            int index = int.Parse(entry.LocalName, System.Globalization.CultureInfo.InvariantCulture);
            pt.GetProperty("Item", [typeof(int)])!.SetValue(parent, replacement, [index]);
            Reregister(parent, entry.LocalName, replacement);
            return;
        }
        if (pt.IsGenericType && pt.GetGenericTypeDefinition() == typeof(TorchSharp.Modules.ModuleDict<>))
        {
            pt.GetProperty("Item", [typeof(string)])!.SetValue(parent, replacement, [entry.LocalName]);
            Reregister(parent, entry.LocalName, replacement);
            return;
        }
        foreach (var f in FieldsHolding(parent, entry.Module)) f.SetValue(parent, replacement);
        Reregister(parent, entry.LocalName, replacement);
    }

    private static void Reregister(nn.Module parent, string name, nn.Module replacement)
    {
        // Sequential keeps its own lists; the base registry may or may not hold the name.
        bool registered = parent.named_children().Any(c => c.name == name) || parent is not TorchSharp.Modules.Sequential;
        if (registered)
        {
            try { parent.register_module(name, null!); } catch (ArgumentException) { /* not in the base registry */ }
            try { parent.register_module(name, replacement); }
            catch (ArgumentException) when (parent is TorchSharp.Modules.Sequential) { /* Sequential lists are authoritative */ }
        }
    }

    private static List<FieldInfo> FieldsHolding(nn.Module parent, nn.Module child)
    {
        var list = new List<FieldInfo>();
        for (var t = parent.GetType(); t != null && t != typeof(nn.Module); t = t.BaseType)
        {
            if (t.Assembly == typeof(nn.Module).Assembly) break; // TorchSharp's own internals
            foreach (var f in t.GetFields(AllInstance))
            {
                if (f.FieldType.IsValueType) continue;
                if (ReferenceEquals(f.GetValue(parent), child)) list.Add(f);
            }
        }
        return list;
    }

    private static FieldInfo GetField(Type t, string name) =>
        t.GetField(name, BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public)
        ?? throw new InvalidOperationException($"TorchSharp {t.Name} has no field '{name}' (unsupported TorchSharp version).");

    /// <summary>The generic <c>Module&lt;...&gt;</c> base of <paramref name="t"/> (what a field must be declared as to hold it), or <paramref name="t"/>.</summary>
    private static Type ModuleBase(Type t)
    {
        for (var b = t; b != null; b = b.BaseType)
            if (b.IsGenericType && b.Assembly == typeof(nn.Module).Assembly && b.Name.StartsWith("Module`", StringComparison.Ordinal)) return b;
        return t;
    }

    /// <summary>C#-style type name (generic arguments spelled out).</summary>
    public static string TypeName(Type t)
    {
        if (!t.IsGenericType) return t.Name;
        string n = t.Name[..t.Name.IndexOf('`')];
        return $"{n}<{string.Join(", ", t.GetGenericArguments().Select(TypeName))}>";
    }
}

/// <summary>Glob matching of layer names (<c>*</c> any run of characters including dots, <c>?</c> one character) and close-name suggestions.</summary>
internal static class NameGlob
{
    public static bool IsMatch(string pattern, string name) =>
        pattern.Length == 0 ? name.Length == 0 : Glob.WildcardsOnly(pattern).IsMatch(name);

    /// <summary>Up to <paramref name="count"/> names closest to <paramref name="pattern"/> (edit distance, wildcards removed).</summary>
    public static IReadOnlyList<string> Closest(string pattern, IEnumerable<string> names, int count = 3)
    {
        string p = pattern.Replace("*", "").Replace("?", "");
        return names.Select(n => (n, d: Distance(p, n)))
            .OrderBy(x => x.d).ThenBy(x => x.n, StringComparer.Ordinal)
            .Take(count).Select(x => x.n).ToList();
    }

    private static int Distance(string a, string b)
    {
        var prev = new int[b.Length + 1];
        var cur = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++) prev[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            cur[0] = i;
            for (int j = 1; j <= b.Length; j++)
                cur[j] = Math.Min(Math.Min(cur[j - 1] + 1, prev[j] + 1), prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            (prev, cur) = (cur, prev);
        }
        return prev[b.Length];
    }
}

/// <summary>Turns TorchSharp's generic hook removers into plain actions.</summary>
internal static class Hooks
{
    public static Action Unhook(nn.HookableModule<Func<nn.Module<Tensor, Tensor>, Tensor, Tensor>, Func<nn.Module<Tensor, Tensor>, Tensor, Tensor, Tensor>>.HookRemover remover) =>
        remover.remove;
}
