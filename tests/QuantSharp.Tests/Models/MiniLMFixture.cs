using QuantSharp.Models.Data;
using QuantSharp.Models.MiniLM;

namespace QuantSharp.Tests.Models;

/// <summary>
/// all-MiniLM-L6-v2 loaded once for a test class, with the evaluation quotes encoded by ONNX Runtime (the package's
/// model and pooling on the same token ids) and by the float32 TorchSharp model: encoding is the slow part.
/// </summary>
public sealed class MiniLMFixture : IDisposable
{
    public MiniLMFixture()
    {
        Model = MiniLMModel.FromPackage();
        Tokenizer = SentenceTokenizer.FromPackage();
        Sentences = InspirationalQuotes.Evaluation;
        OnnxRuntime = MiniLMPackage.EncodeWithOnnxRuntime(Sentences.Select(Tokenizer.TokenIds).ToList());
        Float32 = Model.Encode(Tokenizer, Sentences);
    }

    public MiniLMModel Model { get; }
    public SentenceTokenizer Tokenizer { get; }
    public IReadOnlyList<string> Sentences { get; }
    public float[][] OnnxRuntime { get; }
    public float[][] Float32 { get; }

    public void Dispose() => Model.Dispose();
}
