using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Cli.Demo;

/// <summary>MNIST images and labels as TorchSharp tensors, normalised for <see cref="MnistNet"/>.</summary>
internal sealed class MnistSet : IDisposable
{
    private MnistSet(Tensor images, Tensor labels, string source)
    {
        Images = images;
        Labels = labels;
        Source = source;
    }

    /// <summary>Normalised images, float32 [N, 1, 28, 28]: (pixel/255 − <see cref="MnistNet.Mean"/>) / <see cref="MnistNet.Std"/>.</summary>
    public Tensor Images { get; }

    /// <summary>Labels 0..9, int64 [N].</summary>
    public Tensor Labels { get; }

    /// <summary>Where the data came from (for messages).</summary>
    public string Source { get; }

    /// <summary>Number of images.</summary>
    public int Count => (int)Images.shape[0];

    /// <summary>Loads an images IDX file ([N, 28, 28]) and its labels IDX file ([N]), keeping at most <paramref name="maxItems"/>.</summary>
    public static MnistSet Load(string imagesPath, string labelsPath, int maxItems = int.MaxValue)
    {
        var images = IdxFile.Read(imagesPath, maxItems);
        var labels = IdxFile.Read(labelsPath, maxItems);
        if (images.Shape.Length != 3 || images.Shape[1] != 28 || images.Shape[2] != 28)
            throw new InvalidDataException($"{imagesPath}: expected MNIST images [N, 28, 28], found [{string.Join(", ", images.Shape)}].");
        if (labels.Shape.Length != 1 || labels.Count != images.Count)
            throw new InvalidDataException($"{labelsPath}: expected {images.Count} labels, found shape [{string.Join(", ", labels.Shape)}].");
        if (labels.Data.Any(l => l > 9))
            throw new InvalidDataException($"{labelsPath}: labels must be digits 0..9.");
        return FromBytes(images.Data, labels.Data, images.Count, imagesPath);
    }

    /// <summary>Builds a set from raw 28×28 pixels (row-major, 0..255) and labels.</summary>
    public static MnistSet FromBytes(byte[] pixels, byte[] labels, int count, string source)
    {
        using var scope = NewDisposeScope();
        // Normalized here rather than by tensor ops with number operands: no temporary Scalar (docs/QUANTIZER.md
        // "Threads"), and this file is also compiled into the examples, which cannot see the library's KeptScalars.
        var normalized = new float[(long)count * 28 * 28];
        for (long i = 0; i < normalized.LongLength; i++) normalized[i] = (pixels[i] / 255f - MnistNet.Mean) / MnistNet.Std;
        var x = tensor(normalized, new long[] { count, 1, 28, 28 });
        var y = tensor(labels, new long[] { count }, ScalarType.Byte).to_type(ScalarType.Int64);
        return new MnistSet(x.MoveToOuterDisposeScope(), y.MoveToOuterDisposeScope(), source);
    }

    /// <summary>The images [start, start+count) as a new view (dispose it).</summary>
    public Tensor ImagesSlice(int start, int count) => Images.narrow(0, start, count);

    /// <summary>The images and labels at <paramref name="indices"/>, as a new set (dispose it).</summary>
    public MnistSet Subset(long[] indices)
    {
        using var scope = NewDisposeScope();
        var index = tensor(indices);
        return new MnistSet(Images.index_select(0, index).MoveToOuterDisposeScope(), Labels.index_select(0, index).MoveToOuterDisposeScope(), Source);
    }

    /// <summary>Top-1 accuracy (fraction in [0, 1]) of <paramref name="model"/> on this set, in batches.</summary>
    public double Accuracy(Module<Tensor, Tensor> model, int batchSize = 500)
    {
        long correct = 0;
        using var _ = no_grad();
        for (int start = 0; start < Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            int n = Math.Min(batchSize, Count - start);
            var logits = model.call(Images.narrow(0, start, n));
            correct += logits.argmax(1).eq(Labels.narrow(0, start, n)).sum().item<long>();
        }
        return (double)correct / Count;
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        Images.Dispose();
        Labels.Dispose();
    }
}
