using System.Reflection;
using QuantSharp.Tensors;
using TorchSharp;

namespace QuantSharp.Tests.Threads;

/// <summary>
/// No library method hands libtorch a temporary <see cref="Scalar"/> (docs/QUANTIZER.md, "Threads"): read from the
/// compiled IL, no method of QuantSharp, QuantSharp.Models or the CLI outside <see cref="KeptScalars"/> makes a Scalar
/// (an implicit conversion from a number or <c>ToScalar</c>), or calls a TorchSharp method that makes one (the
/// <c>+</c> operator's alpha of 1, <c>x * 2.0</c>, <c>square()</c>, ...), and every method that creates a
/// <see cref="KeptScalars"/> also disposes it.
/// </summary>
public sealed class ScalarCallSiteTests
{
    private static readonly Lazy<HashSet<MethodBase>> s_temporaryScalarMethods = new(() => TemporaryScalarMethods(typeof(Scalar).Assembly));

    private static IEnumerable<MethodBase> LibraryMethods() =>
        new[] { typeof(Quantizer).Assembly, typeof(QuantSharp.Models.MiniLM.MiniLMModel).Assembly, typeof(QuantSharp.Cli.Program).Assembly }
            .SelectMany(IlCallSites.MethodsOf)
            .Where(m => m.DeclaringType != typeof(KeptScalars));

    [Fact]
    public void NoLibraryMethodPassesATemporaryScalar()
    {
        var sites = LibraryMethods()
            .SelectMany(m => IlCallSites.Callees(m)
                .Where(c => IsScalarFactory(c) || s_temporaryScalarMethods.Value.Contains(c))
                .Select(c => $"{Describe(m)} calls {Describe(c)}"))
            .Distinct()
            .ToList();
        Assert.True(sites.Count == 0,
            "Library code passes libtorch a Scalar that a garbage collection can free during the call; use KeptScalars:\n" +
            string.Join("\n", sites));
    }

    [Fact]
    public void EveryMethodThatCreatesKeptScalarsDisposesThem()
    {
        var ctor = typeof(KeptScalars).GetConstructor(Type.EmptyTypes)!;
        var creators = LibraryMethods().Where(m => IlCallSites.Callees(m).Contains(ctor, IlCallSites.ByDefinition)).ToList();
        var leaks = creators.Where(m => !DisposesWhatItCreates(m, ctor)).Select(Describe).ToList();
        Assert.True(creators.Count >= 15, $"expected the library's arithmetic to go through KeptScalars, found {creators.Count} methods");
        Assert.True(leaks.Count == 0, "These methods create a KeptScalars without a using (use 'using var kept = new KeptScalars();'):\n" + string.Join("\n", leaks));
    }

    // Each 'newobj KeptScalars()' is stored in a local that is later loaded for a Dispose call: what 'using' compiles to.
    private static bool DisposesWhatItCreates(MethodBase method, ConstructorInfo ctor)
    {
        var il = IlCallSites.Instructions(method);
        for (int i = 0; i + 1 < il.Count; i++)
        {
            if (il[i].Method is null || !IlCallSites.ByDefinition.Equals(il[i].Method, ctor)) continue;
            int local = il[i + 1].Local;
            bool disposed = local >= 0 && il[i + 1].Op.Name!.StartsWith("stloc") && Enumerable.Range(i + 2, il.Count - i - 3).Any(j =>
                il[j].Local == local && il[j].Op.Name!.StartsWith("ldloc") && il[j + 1].Method?.Name == nameof(IDisposable.Dispose));
            if (!disposed) return false;
        }
        return true;
    }

    /// <summary>The check sees what it must: the TorchSharp entry points behind the operators and calls that made the
    /// two failures of this project's parallel test runs, and a method that uses them.</summary>
    [Fact]
    public void TheCheckFindsTheKnownTemporaryScalars()
    {
        var hazards = s_temporaryScalarMethods.Value;
        Assert.Contains(typeof(torch.Tensor).GetMethod("op_Addition", [typeof(torch.Tensor), typeof(torch.Tensor)])!, hazards);
        Assert.Contains(typeof(torch.Tensor).GetMethod("op_Multiply", [typeof(torch.Tensor), typeof(double)])!, hazards);
        Assert.Contains(typeof(torch.Tensor).GetMethod(nameof(torch.Tensor.square), Type.EmptyTypes)!, hazards);
        Assert.Contains(typeof(torch.Tensor).GetMethod(nameof(torch.Tensor.add_), [typeof(torch.Tensor)])!, hazards);
        Assert.DoesNotContain(typeof(torch.Tensor).GetMethod(nameof(torch.Tensor.add), [typeof(torch.Tensor), typeof(Scalar)])!, hazards);
        Assert.DoesNotContain(typeof(torch.Tensor).GetMethod(nameof(torch.Tensor.mul), [typeof(Scalar)])!, hazards);

        var unsafeSum = typeof(ScalarCallSiteTests).GetMethod(nameof(UnsafeSum), BindingFlags.NonPublic | BindingFlags.Static)!;
        Assert.Contains(IlCallSites.Callees(unsafeSum), c => hazards.Contains(c));
        var clampScaled = typeof(ScalarCallSiteTests).GetMethod(nameof(UnsafeClamp), BindingFlags.NonPublic | BindingFlags.Static)!;
        Assert.Contains(IlCallSites.Callees(clampScaled), IsScalarFactory);
    }

    private static torch.Tensor UnsafeSum(torch.Tensor a, torch.Tensor b) => a + b;
    private static torch.Tensor UnsafeClamp(torch.Tensor a) => a.clamp(-128, 127);

    private static bool IsScalarFactory(MethodBase m) =>
        m is MethodInfo { IsStatic: true } mi && mi.ReturnType == typeof(Scalar) && mi.Name is "op_Implicit" or "ToScalar";

    /// <summary>TorchSharp methods that make a Scalar and do not dispose it, directly or through another such method.</summary>
    private static HashSet<MethodBase> TemporaryScalarMethods(Assembly torchSharp)
    {
        var calls = IlCallSites.MethodsOf(torchSharp).ToDictionary(m => m, m => IlCallSites.Callees(m).ToList(), IlCallSites.ByDefinition);
        var found = new HashSet<MethodBase>(IlCallSites.ByDefinition);
        for (bool changed = true; changed;)
        {
            changed = false;
            foreach (var (method, callees) in calls)
            {
                if (found.Contains(method) || callees.Any(c => c.Name == nameof(IDisposable.Dispose) && c.DeclaringType == typeof(Scalar))) continue;
                if (callees.Any(c => IsScalarFactory(c) || found.Contains(c)))
                    changed = found.Add(method) | changed;
            }
        }
        return found;
    }

    private static string Describe(MethodBase m) =>
        $"{m.DeclaringType?.FullName}.{m.Name}({string.Join(", ", m.GetParameters().Select(p => p.ParameterType.Name))})";
}
