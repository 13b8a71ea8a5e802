using System.Reflection;
using System.Reflection.Emit;

namespace QuantSharp.Tests.Threads;

/// <summary>One IL instruction: its opcode, the local variable it loads or stores (or -1), the method it calls or
/// creates (or null).</summary>
internal readonly record struct IlInstruction(OpCode Op, int Local, MethodBase? Method);

/// <summary>
/// A compiled method's IL, decoded just enough for tests that check which library code reaches which TorchSharp entry
/// points: the methods it calls (call, callvirt, newobj, ldftn, ldvirtftn) and the locals it loads and stores.
/// </summary>
internal static class IlCallSites
{
    private const BindingFlags Declared =
        BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    private static readonly Dictionary<short, OpCode> s_opCodes = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    /// <summary>Every method and constructor with a body declared in <paramref name="assembly"/>, compiler-generated
    /// ones (lambdas, local functions, iterators, async state machines) included.</summary>
    public static IEnumerable<MethodBase> MethodsOf(Assembly assembly) =>
        assembly.GetTypes().SelectMany(t => t.GetMethods(Declared).Cast<MethodBase>().Concat(t.GetConstructors(Declared)));

    /// <summary>The methods <paramref name="method"/>'s IL calls or takes a pointer to (tokens that do not resolve,
    /// e.g. into an assembly that is not loaded, are skipped).</summary>
    public static IEnumerable<MethodBase> Callees(MethodBase method) =>
        Instructions(method).Where(i => i.Method is not null).Select(i => i.Method!);

    /// <summary><paramref name="method"/>'s instructions in order (none for a method without a body).</summary>
    public static List<IlInstruction> Instructions(MethodBase method)
    {
        var result = new List<IlInstruction>();
        byte[]? il;
        try { il = method.GetMethodBody()?.GetILAsByteArray(); }
        catch (Exception e) when (e is InvalidOperationException or NotSupportedException or BadImageFormatException) { il = null; }
        if (il is null) return result;

        Type[]? typeArgs = method.DeclaringType is { IsGenericType: true } t ? t.GetGenericArguments() : null;
        Type[]? methodArgs = method.IsGenericMethod ? method.GetGenericArguments() : null;
        int i = 0;
        while (i < il.Length)
        {
            short code = il[i] == 0xFE ? (short)(0xFE00 | il[i + 1]) : il[i];
            i += il[i] == 0xFE ? 2 : 1;
            OpCode op = s_opCodes[code];
            MethodBase? callee = op.OperandType == OperandType.InlineMethod
                ? Resolve(method.Module, BitConverter.ToInt32(il, i), typeArgs, methodArgs)
                : null;
            result.Add(new IlInstruction(op, LocalIndex(op, il, i), callee));
            i += OperandSize(op.OperandType, il, i);
        }
        return result;
    }

    /// <summary>Compares methods by definition (module and metadata token): the same method resolved from different call
    /// sites, or in different generic instantiations, is one method.</summary>
    public static IEqualityComparer<MethodBase> ByDefinition { get; } = EqualityComparer<MethodBase>.Create(
        (a, b) => a is null ? b is null : b is not null && a.Module == b.Module && a.MetadataToken == b.MetadataToken,
        m => HashCode.Combine(m.Module, m.MetadataToken));

    private static MethodBase? Resolve(Module module, int token, Type[]? typeArgs, Type[]? methodArgs)
    {
        try { return module.ResolveMethod(token, typeArgs, methodArgs); }
        catch (Exception e) when (e is ArgumentException or TypeLoadException or FileNotFoundException or MissingMethodException) { return null; }
    }

    private static int LocalIndex(OpCode op, byte[] il, int operand)
    {
        if (op == OpCodes.Ldloc_0 || op == OpCodes.Stloc_0) return 0;
        if (op == OpCodes.Ldloc_1 || op == OpCodes.Stloc_1) return 1;
        if (op == OpCodes.Ldloc_2 || op == OpCodes.Stloc_2) return 2;
        if (op == OpCodes.Ldloc_3 || op == OpCodes.Stloc_3) return 3;
        if (op == OpCodes.Ldloc_S || op == OpCodes.Stloc_S) return il[operand];
        if (op == OpCodes.Ldloc || op == OpCodes.Stloc) return BitConverter.ToUInt16(il, operand);
        return -1;
    }

    private static int OperandSize(OperandType type, byte[] il, int at) => type switch
    {
        OperandType.InlineNone => 0,
        OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
        OperandType.InlineVar => 2,
        OperandType.InlineI8 or OperandType.InlineR => 8,
        OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, at),
        _ => 4,
    };
}
