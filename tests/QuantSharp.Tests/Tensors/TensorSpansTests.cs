using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Tensors;

/// <summary><see cref="TensorSpans.Shape"/> (dim and size, no native callback) gives TorchSharp's <c>shape</c> for every rank and for views.</summary>
public class TensorSpansTests
{
    [Fact]
    public void ShapeMatchesTorchSharpsShapeForEveryRankAndView()
    {
        using var scope = NewDisposeScope();
        var tensors = new[]
        {
            torch.tensor(3f), torch.zeros(7), torch.zeros(0, 5), torch.zeros(2, 3, 4), torch.zeros(2, 1, 6, 5).transpose(1, 3),
            torch.zeros(4, 6)[TensorIndex.Slice(1, 3)], torch.zeros([1, 2, 3, 4, 5, 6]),
        };
        foreach (var t in tensors) Assert.Equal(t.shape, TensorSpans.Shape(t));
    }
}
