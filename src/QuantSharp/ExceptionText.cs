namespace QuantSharp;

/// <summary>
/// The one way a message is composed from an inner exception's message (<c>"Cannot write 'x': {inner}. The input is
/// unchanged."</c>): .NET messages usually end with a period and argument exceptions append <c>" (Parameter 'name')"</c>,
/// so pasting <see cref="Exception.Message"/> before a period gave "denied.." and leaked C# parameter names.
/// </summary>
internal static class ExceptionText
{
    /// <summary>The message of <paramref name="ex"/> without the <c>" (Parameter 'x')"</c> suffix of argument exceptions.</summary>
    public static string Plain(Exception ex) => ex is ArgumentException { ParamName: { } p }
        ? ex.Message.Replace($" (Parameter '{p}')", "", StringComparison.Ordinal) : ex.Message;

    /// <summary>The message as a clause to continue a sentence: <see cref="Plain"/>, trimmed, without its final period.</summary>
    public static string Clause(Exception ex) => Plain(ex).Trim().TrimEnd('.').TrimEnd();

    /// <summary>The message as one sentence ending with exactly one period (to be followed by another sentence).</summary>
    public static string Sentence(Exception ex) => Clause(ex) + ".";
}
