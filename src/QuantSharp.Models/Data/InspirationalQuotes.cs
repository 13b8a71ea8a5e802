using System.Text.Json;
using System.Text.Json.Serialization;

namespace QuantSharp.Models.Data;

/// <summary>One quote: its text and who said it.</summary>
/// <param name="Text">The quote.</param>
/// <param name="From">Its author.</param>
public sealed record Quote([property: JsonPropertyName("text")] string Text, [property: JsonPropertyName("from")] string From);

/// <summary>
/// The 326 quotes of the npm package <c>inspirational-quotes</c> 2.0.1 (MIT, Vinit Shahdeo; licence in
/// <c>Data/inspirational-quotes.LICENSE</c>), bundled so the MiniLM demo and tests run offline. Split in file order:
/// the first <see cref="CalibrationCount"/> quotes calibrate activation ranges, the other 226 are the evaluation set.
/// </summary>
public static class InspirationalQuotes
{
    /// <summary>Quotes used for calibration (the first ones in the file).</summary>
    public const int CalibrationCount = 100;

    private static readonly Lazy<IReadOnlyList<Quote>> s_all = new(Load);

    /// <summary>All 326 quotes in file order.</summary>
    public static IReadOnlyList<Quote> All => s_all.Value;

    /// <summary>The calibration part: quotes 0 to 99.</summary>
    public static IReadOnlyList<string> Calibration => All.Take(CalibrationCount).Select(q => q.Text).ToList();

    /// <summary>The evaluation part: quotes 100 to 325.</summary>
    public static IReadOnlyList<string> Evaluation => All.Skip(CalibrationCount).Select(q => q.Text).ToList();

    private static IReadOnlyList<Quote> Load()
    {
        const string name = "QuantSharp.Models.Data.inspirational-quotes.json";
        using var stream = typeof(InspirationalQuotes).Assembly.GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"The resource '{name}' is missing from QuantSharp.Models.");
        // The file starts with a UTF-8 byte-order mark, which System.Text.Json skips.
        return JsonSerializer.Deserialize<List<Quote>>(stream) ?? throw new InvalidDataException("The quotes file is empty.");
    }
}
