using System.Runtime.InteropServices;
using Onnx;
using static TorchSharp.torch;

namespace QuantSharp.Models.MiniLM;

/// <summary>
/// Reads a PyTorch-exported BERT ONNX graph's weights under Hugging Face names. Biases, norms and embeddings are
/// initializers with their Hugging Face names; each Linear weight is an anonymous initializer holding the transposed
/// matrix [in, out], found through the graph: <c>MatMul(x, W)</c> whose output feeds an <c>Add</c> with the named
/// <c>*.bias</c>. Such a weight is returned as <c>*.weight</c> in PyTorch's [out, in] layout.
/// </summary>
internal static class OnnxBertWeights
{
    /// <summary>Float32 tensors by Hugging Face name (the caller disposes them).</summary>
    public static Dictionary<string, Tensor> Read(Stream onnx)
    {
        ModelProto model;
        try
        {
            model = ModelProto.Parser.ParseFrom(onnx);
        }
        catch (Google.Protobuf.InvalidProtocolBufferException e)
        {
            throw new InvalidDataException($"Not an ONNX model (protobuf): {e.Message}", e);
        }
        var graph = model.Graph ?? throw new InvalidDataException("The ONNX model has no graph.");
        var initializers = graph.Initializer.ToDictionary(t => t.Name, StringComparer.Ordinal);
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var t in graph.Initializer)
            {
                if (t.DataType == (int)TensorProto.Types.DataType.Float && IsNamed(t.Name))
                    result[t.Name] = ToTensor(t);
            }
            // MatMul(x, W) -> Add(bias, y) or Add(y, bias): W^T is the Linear weight of that bias's layer.
            var consumers = graph.Node.SelectMany(n => n.Input.Select(i => (Input: i, Node: n)))
                .ToLookup(p => p.Input, p => p.Node, StringComparer.Ordinal);
            foreach (var matmul in graph.Node.Where(n => n.OpType == "MatMul" && n.Input.Count == 2))
            {
                if (!initializers.TryGetValue(matmul.Input[1], out var w) || w.Dims.Count != 2) continue;
                var add = consumers[matmul.Output[0]].FirstOrDefault(n => n.OpType == "Add");
                string? bias = add?.Input.FirstOrDefault(i => i != matmul.Output[0] && i.EndsWith(".bias", StringComparison.Ordinal));
                if (bias is null) continue;
                string name = bias[..^".bias".Length] + ".weight";
                if (result.ContainsKey(name))
                    throw new InvalidDataException($"The ONNX graph gives two MatMul weights for '{name}'.");
                using var transposed = ToTensor(w);
                result[name] = transposed.t().contiguous();
            }
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    // Hugging Face names are dotted paths (embeddings.word_embeddings.weight); the exporter's own constants are numbers.
    private static bool IsNamed(string name) => name.Contains('.') && !char.IsDigit(name[0]);

    private static Tensor ToTensor(TensorProto t)
    {
        if (t.DataType != (int)TensorProto.Types.DataType.Float)
            throw new InvalidDataException($"ONNX initializer '{t.Name}' has data type {t.DataType}, not float32.");
        if (t.DataLocation == TensorProto.Types.DataLocation.External)
            throw new InvalidDataException($"ONNX initializer '{t.Name}' is stored in an external file; this reader needs the weights inside the model.");
        long[] shape = t.Dims.ToArray();
        float[] values = t.RawData.Length > 0
            ? MemoryMarshal.Cast<byte, float>(t.RawData.Span).ToArray()
            : t.FloatData.ToArray();
        long expected = shape.Aggregate(1L, (a, b) => a * b);
        if (values.Length != expected)
            throw new InvalidDataException($"ONNX initializer '{t.Name}' holds {values.Length} values for shape [{string.Join(", ", shape)}].");
        return tensor(values, shape);
    }
}
