using QuantSharp.Modules;

namespace QuantSharp.Tests;

/// <summary>
/// Runs test code with <see cref="QuantizedModule.UseBFloat16Compute"/> off (float32 arithmetic in every quantized layer)
/// and puts the switch back as it was, whatever the code throws.
/// </summary>
internal static class Float32Compute
{
    /// <summary><paramref name="f"/>'s result, computed with bfloat16 compute off.</summary>
    internal static T Run<T>(Func<T> f)
    {
        bool saved = QuantizedModule.UseBFloat16Compute;
        QuantizedModule.UseBFloat16Compute = false;
        try
        {
            return f();
        }
        finally
        {
            QuantizedModule.UseBFloat16Compute = saved;
        }
    }

    /// <summary>Runs <paramref name="action"/> with bfloat16 compute off.</summary>
    internal static void Run(Action action) => Run(() => { action(); return 0; });
}
