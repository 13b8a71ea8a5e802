using System.Diagnostics.CodeAnalysis;
using QuantSharp.Kernels;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// A quantized replacement for <see cref="TorchSharp.Modules.Conv1d"/> and <see cref="TorchSharp.Modules.Conv2d"/>
/// (zero padding only). Per-group scales run along the flattened <c>in/groups * kernel</c> reduction axis of each
/// output channel. Ungrouped layers choose among the managed kernels and libtorch's routes; depthwise layers (as many
/// groups as input channels) take a kernel of their own where it pays, other grouped layers the small-convolution
/// kernel group by group or, on CPUs with AVX512-BF16, pair images (weight-only in bfloat16, static W8A8 exactly in
/// integer codes) where it pays, else libtorch's route.
/// </summary>
public sealed class QuantizedConv : QuantizedModule
{
    private readonly long[] _stride, _padding, _dilation;

    /// <summary>Creates a quantized convolution from a quantized <c>[out, in/groups, k...]</c> weight (rank 3: Conv1d, rank 4: Conv2d).</summary>
    /// <param name="weight">The quantized weight.</param>
    /// <param name="bias">The float bias <c>[out]</c> (copied), or null.</param>
    /// <param name="stride">Stride per spatial dimension.</param>
    /// <param name="padding">Zero padding per spatial dimension (both sides).</param>
    /// <param name="dilation">Dilation per spatial dimension.</param>
    /// <param name="groups">Number of convolution groups.</param>
    /// <param name="input">Static input quantization, or null.</param>
    /// <exception cref="ArgumentException">The weight is not rank 3 or 4, or the geometry arrays do not have one entry per spatial dimension.</exception>
    public QuantizedConv(QuantizedWeight weight, Tensor? bias, long[] stride, long[] padding, long[] dilation, long groups = 1, ActivationQuantization? input = null)
        : base(weight.Shape.Count == 3 ? "QuantizedConv1d" : "QuantizedConv2d", weight, bias, input)
    {
        if (weight.Shape.Count is not (3 or 4)) throw new ArgumentException($"Only Conv1d and Conv2d weights (rank 3 or 4) are supported, got rank {weight.Shape.Count}.", nameof(weight));
        int n = weight.Shape.Count - 2;
        if (stride.Length != n || padding.Length != n || dilation.Length != n)
            throw new ArgumentException($"stride, padding and dilation need {n} value(s) each (one per spatial dimension).", nameof(stride));
        if (groups < 1) throw new ArgumentException($"groups must be at least 1, got {groups}.", nameof(groups));
        _stride = (long[])stride.Clone();
        _padding = (long[])padding.Clone();
        _dilation = (long[])dilation.Clone();
        this.groups = groups;
    }

#pragma warning disable IDE1006 // TorchSharp's names
    /// <summary>Stride per spatial dimension.</summary>
    public IReadOnlyList<long> stride => _stride;

    /// <summary>Zero padding per spatial dimension (both sides).</summary>
    public IReadOnlyList<long> padding => _padding;

    /// <summary>Dilation per spatial dimension.</summary>
    public IReadOnlyList<long> dilation => _dilation;

    /// <summary>Number of convolution groups.</summary>
    public long groups { get; }

    /// <summary>Input channels.</summary>
    public long in_channels => WeightShape[1] * groups;

    /// <summary>Output channels.</summary>
    public long out_channels => WeightShape[0];

    /// <summary>Kernel size per spatial dimension.</summary>
    public IReadOnlyList<long> kernel_size => WeightShape.Skip(2).ToArray();
#pragma warning restore IDE1006

    /// <summary>Spatial dimensions: 1 for Conv1d, 2 for Conv2d.</summary>
    internal int SpatialDims => WeightShape.Count - 2;

    /// <summary>Why a float convolution cannot be converted (unsupported padding), or null.</summary>
    internal static string? Unsupported(TorchSharp.Modules.Convolution conv)
    {
        if (conv.transposed) return "transposed convolutions are not supported";
        if (conv.padding_mode != PaddingModes.Zeros) return $"padding mode {conv.padding_mode} is not supported (only zeros)";
        if (conv.weight is null || conv.weight.dim() is not (3 or 4)) return "only Conv1d and Conv2d are supported";
        return ResolvePadding(conv, out _);
    }

    internal static string? ResolvePadding(TorchSharp.Modules.Convolution conv, out long[] padding)
    {
        int n = (int)conv.weight!.dim() - 2;
        padding = new long[n];
        if (conv.padding_type is { } type)
        {
            if (type == TorchSharp.Padding.Valid) return null;
            for (int i = 0; i < n; i++)
            {
                long total = conv.dilation[i] * (conv.kernel_size[i] - 1);
                if (total % 2 != 0) return "padding 'same' with an even effective kernel (asymmetric padding) is not supported";
                padding[i] = total / 2;
            }
            return null;
        }
        var p = conv.padding;
        for (int i = 0; i < n; i++) padding[i] = p is null ? 0 : p.Length == 1 ? p[0] : p[i];
        return null;
    }

    /// <summary>A quantized convolution with <paramref name="conv"/>'s geometry and bias around <paramref name="weight"/>.</summary>
    internal static QuantizedConv Create(TorchSharp.Modules.Convolution conv, QuantizedWeight weight, ActivationQuantization? input)
    {
        string? why = Unsupported(conv);
        if (why != null) throw new ArgumentException($"Cannot quantize this convolution: {why}.");
        ResolvePadding(conv, out long[] padding);
        int n = (int)conv.weight!.dim() - 2;
        return new QuantizedConv(weight, conv.bias, Expand(conv.stride, n), padding, Expand(conv.dilation, n), conv.groups, input);
    }

    internal static long[] Expand(long[] v, int n) => v.Length == n ? (long[])v.Clone() : Enumerable.Repeat(v[0], n).ToArray();

    /// <summary>
    /// Whether quantized convolutions choose their route by timing it on this machine (default false), as
    /// <c>torch.backends.cudnn.benchmark</c> does for cuDNN's algorithms. By default each call takes the route a measured
    /// rule gives for its shapes (<c>ConvolutionCost</c>), set on the development machines (AMD Zen 4 and Zen 5 VMs,
    /// docs/BENCHMARKS.md); other CPUs, thread counts and memory systems can favour another route. With this on, a
    /// layer's first call on each input shape (batch, channels, height, width) runs every route that applies on that
    /// input: the managed kernels (unfold and the packed kernels, in integers for static W8A8), the small-convolution
    /// kernel (a depthwise layer: its own kernel), libtorch's float32 convolution on the weight dequantized for the call and, where
    /// <see cref="QuantizedModule.UseBFloat16Compute"/> lets it run, libtorch's bfloat16 convolution; in turn, first one
    /// call each until the code is warm (50 rounds, or about a second for slow calls, and the JIT quiet for a quarter of a
    /// second; at most 5 seconds), then nine timed rounds of a block of calls each (up to 20, about 5 ms). The layer keeps,
    /// for that shape, the route with the lowest median time where it beats the rule's by 5% (else the rule's), and that
    /// call returns its output. So the first call on a shape takes from a quarter of a second to a few seconds; later
    /// calls take the kept route. The routes agree within float32 rounding (static W8A8: the same integers), the
    /// bfloat16 route within bfloat16's (docs/ACCURACY.md). Up to 64 shapes are tuned per layer; calls that need
    /// gradients, and inputs the kernels do not take, keep the differentiable path. What a layer has tuned stays with it;
    /// with <see cref="QuantizedModule.UseBFloat16Compute"/> switched, a shape is tuned again (never keeping the
    /// bfloat16 route once it is off).
    /// </summary>
    public static bool Autotune { get; set; }

    private ConvolutionTuner? _tuner;

    /// <inheritdoc/>
    public override Tensor forward(Tensor input) => Forward(input, ConvolutionRoute.Auto);

    /// <summary>
    /// The forward pass through <paramref name="route"/> (<see cref="ConvolutionRoute.Auto"/>: the measured rule of
    /// <see cref="ConvolutionCost"/>, or with <see cref="Autotune"/> the route timed fastest for the input's shape).
    /// </summary>
    internal Tensor Forward(Tensor input, ConvolutionRoute route)
    {
        if (route == ConvolutionRoute.Auto && Autotune && Tunable(input, out long[] imageShape))
        {
            var tuner = _tuner ?? Interlocked.CompareExchange(ref _tuner, new ConvolutionTuner(), null) ?? _tuner;
            route = tuner.Route(imageShape, BFloat16Convolutions, () => Candidates(input), r => ForwardVia(input, r));
        }
        return ForwardVia(input, route);
    }

    /// <summary>
    /// The distinct routes <see cref="Autotune"/> times for <paramref name="input"/>, the rule's first: the managed
    /// kernels, the small kernel where it fits, libtorch's float32 route and, where it may run, its bfloat16 route.
    /// </summary>
    internal ConvolutionRoute[] Candidates(Tensor input)
    {
        var routes = new List<ConvolutionRoute> { Decide(input, ConvolutionRoute.Auto, out _, out _) };
        ConvolutionRoute[] all = BFloat16Convolutions
            ? [ConvolutionRoute.Kernel, ConvolutionRoute.Quad, ConvolutionRoute.Direct, ConvolutionRoute.Reference, ConvolutionRoute.BFloat16]
            : [ConvolutionRoute.Kernel, ConvolutionRoute.Quad, ConvolutionRoute.Direct, ConvolutionRoute.Reference];
        foreach (var r in all)
        {
            var decided = Decide(input, r, out _, out _);
            if (!routes.Contains(decided)) routes.Add(decided);
        }
        return [.. routes];
    }

    /// <summary>The route <see cref="Autotune"/> kept for <paramref name="input"/>'s shape, or null.</summary>
    internal ConvolutionRoute? TunedRoute(Tensor input) =>
        _tuner is { } tuner && Tunable(input, out long[] imageShape) ? tuner.Kept(imageShape, BFloat16Convolutions) : null;

    /// <summary>Whether the kernels take <paramref name="input"/> (as images <paramref name="imageShape"/>), so that its routes can be timed.</summary>
    private bool Tunable(Tensor input, out long[] imageShape) => Decide(input, ConvolutionRoute.Kernel, out imageShape, out _) != ConvolutionRoute.Reference;

    /// <summary>The forward pass through <paramref name="route"/>.</summary>
    private Tensor ForwardVia(Tensor input, ConvolutionRoute route)
    {
        using var scope = NewDisposeScope();
        if (route != ConvolutionRoute.Reference && Kernel(input, route) is { } y) return y.MoveToOuterDisposeScope();
        var x = QuantizeInput(input);
        using var w = DequantizeForCall(recordsGradient: input.requires_grad && is_grad_enabled());
        long inChannels = in_channels;
        string expects = SpatialDims == 1
            ? $"a float32 input [batch, {inChannels}, length] (or [{inChannels}, length])"
            : $"a float32 input [batch, {inChannels}, height, width] (or [{inChannels}, height, width])";
        var reference = Guard(input, expects, () => SpatialDims == 1
            ? nn.functional.conv1d(x, w, bias, _stride[0], _padding[0], _dilation[0], groups)
            : nn.functional.conv2d(x, w, bias, _stride, _padding, _dilation, groups));
        return reference.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <see cref="ConvolutionRoute.BFloat16"/>: libtorch's bfloat16 convolution on the weight, the (quantized, for W8A8)
    /// input and the bias rounded to bfloat16, the result back in float32 (<see cref="QuantizedModule.UseBFloat16Compute"/>).
    /// </summary>
    internal Tensor BFloat16Convolution(Tensor input)
    {
        using var w = DequantizeForCall(recordsGradient: false, ScalarType.BFloat16);
        using var x = QuantizeInput(input).to(ScalarType.BFloat16);
        using var b = bias?.to(ScalarType.BFloat16);
        using var y = SpatialDims == 1
            ? nn.functional.conv1d(x, w, b, _stride[0], _padding[0], _dilation[0], groups)
            : nn.functional.conv2d(x, w, b, _stride, _padding, _dilation, groups);
        return y.to(ScalarType.Float32);
    }

    /// <summary>The route the measured rule takes for <paramref name="input"/> (for the bench and tests).</summary>
    internal ConvolutionRoute Route(Tensor input) => Decide(input, ConvolutionRoute.Auto, out _, out _);

    /// <summary>
    /// The convolution through a managed kernel: <see cref="ConvolutionRoute.Kernel"/>, a matrix product per image through
    /// the weight's packed kernel (<see cref="WeightLayout.Convolution"/>: the image is unfolded (im2col) while the GEMM
    /// packs it, the weight is decoded in tiles, never a float copy of it, W8A8 layers multiply in integers),
    /// <see cref="ConvolutionRoute.Direct"/>, the small-convolution kernel (<see cref="DirectConvolution"/>) on the
    /// weight dequantized group by group by the threads that read it, or, for a depthwise layer, <see cref="ConvolutionRoute.Depthwise"/>
    /// (<see cref="DepthwiseConvolution"/>). Null where no kernel applies or, for <see cref="ConvolutionRoute.Auto"/>,
    /// where the measured rule (<see cref="ConvolutionCost"/>) says dequantize-then-libtorch is faster.
    /// </summary>
    internal Tensor? Kernel(Tensor input, ConvolutionRoute route)
    {
        route = Decide(input, route, out long[] imageShape, out var unfold);
        if (route == ConvolutionRoute.Reference) return null;
        bool packedBFloat16 = route == ConvolutionRoute.BFloat16 && PackedBFloat16(unfold);
        if (route == ConvolutionRoute.BFloat16 && !packedBFloat16) return BFloat16Convolution(input);
        if (route == ConvolutionRoute.Direct) return Direct(input, unfold);
        if (route == ConvolutionRoute.Depthwise) return DepthwiseForward(input, unfold);
        long n = imageShape[0];
        var images = input.reshape(imageShape);
        Tensor? y = null;
        // Static W8A8 in integers first (the output channels in lanes; the integer GEMM; grouped, codes from pair images),
        // where that applies; then the packed kernels in float32 or, on the bfloat16 route, the (fake-quantized, for W8A8)
        // input in bfloat16.
        if (InputQuantizer is { } quantizer && !packedBFloat16)
            y = weight.Layout.Convolution(images, unfold, bias, quantizer, groups: (int)groups, quads: route == ConvolutionRoute.Quad);
        y ??= weight.Layout.Convolution(QuantizeInput(images), unfold, bias, null, packedBFloat16, (int)groups);
        if (y is null) return null;
        long[] outShape = SpatialDims == 1 ? [n, out_channels, unfold.OutW] : [n, out_channels, unfold.OutH, unfold.OutW];
        y = y.reshape(outShape);
        return input.dim() == SpatialDims + 2 ? y : y.squeeze(0);
    }

    /// <summary>
    /// The route <paramref name="route"/> becomes for <paramref name="input"/> (<see cref="ConvolutionRoute.Auto"/>: the
    /// measured rule), <see cref="ConvolutionRoute.Reference"/> where no kernel applies (gradients, other dtypes,
    /// shapes libtorch would reject); with the input as images <c>[n, C, H, W]</c> (unbatched: n = 1; a Conv1d's
    /// H = 1) and their unfolding (over the n images). Decided on shapes alone, so a call that goes to libtorch pays no tensor operation here.
    /// </summary>
    private ConvolutionRoute Decide(Tensor input, ConvolutionRoute route, out long[] imageShape, out Im2Col unfold)
    {
        imageShape = [];
        unfold = default;
        if (input.dtype != ScalarType.Float32 || input.device_type != DeviceType.CPU) return ConvolutionRoute.Reference;
        if (input.requires_grad && is_grad_enabled()) return ConvolutionRoute.Reference;
        long[] shape = TensorSpans.Shape(input);
        bool batched = shape.Length == SpatialDims + 2;
        if (!batched && shape.Length != SpatialDims + 1) return ConvolutionRoute.Reference;
        // [n, C, H, W]: unbatched n = 1, a Conv1d's H = 1.
        int offset = batched ? 0 : 1;
        long n = batched ? shape[0] : 1, c = shape[1 - offset];
        long h = SpatialDims == 1 ? 1 : shape[^2], w = shape[^1];
        imageShape = [n, c, h, w];
        if (c != in_channels || (double)n * c * h * w > int.MaxValue) return ConvolutionRoute.Reference;
        if (Unfolding(imageShape) is not { } single) return ConvolutionRoute.Reference;
        var u = unfold = single.ForImages((int)imageShape[0]);
        // A depthwise layer has one kernel of its own, taken where it pays (any route but libtorch's forces it); a static
        // W8A8 input is quantized inside it (a dynamic one before either route).
        if (IsDepthwise)
            return route == ConvolutionRoute.Reference || (route == ConvolutionRoute.Auto && !ConvolutionCost.DepthwisePays(u, InputQuantization is not null && !DynamicInput, out_channels == in_channels))
                ? ConvolutionRoute.Reference : ConvolutionRoute.Depthwise;
        // Static W8A8 layers with the output channels in lanes where that applies and (for the rule) pays; forced where it
        // does not apply, the Kernel route. (Grouped layers' pair images, of codes for static W8A8, decided once here.)
        bool quads = Quads(u), pairs = GroupedPairs(u), codes = pairs && GroupedCodes(u);
        if (route == ConvolutionRoute.Quad)
        {
            if (quads) return ConvolutionRoute.Quad;
            route = ConvolutionRoute.Kernel;
        }
        if (route == ConvolutionRoute.Auto && quads && ConvolutionCost.QuadPays(u, out_channels, groups, codes && ConvolutionCost.GroupedCodesPay(u, groups)))
            return ConvolutionRoute.Quad;
        // Other grouped layers: weight-only ones in bfloat16 from pair images where that pays (and where asked for),
        // static W8A8 ones exactly from pair images of codes where that pays (and where asked for: the Kernel route),
        // else the small kernel, group by group, where it pays; libtorch's bfloat16 route where asked for and the pair
        // images do not apply; any other route but libtorch's forces the small kernel where it fits.
        if (groups > 1)
        {
            if (route == ConvolutionRoute.Reference) return ConvolutionRoute.Reference;
            if (route == ConvolutionRoute.Kernel && codes) return ConvolutionRoute.Kernel;
            if (route == ConvolutionRoute.BFloat16 && pairs) return ConvolutionRoute.BFloat16;
            if (route == ConvolutionRoute.Auto && GroupedLanesFirst(u)) return ConvolutionRoute.BFloat16;
            if (route == ConvolutionRoute.Auto && UseBFloat16Compute && GroupedOnLibTorch(u)) return ConvolutionRoute.BFloat16;
            if (route == ConvolutionRoute.Auto && codes && ConvolutionCost.GroupedCodesPay(u, groups)) return ConvolutionRoute.Kernel;
            if (route == ConvolutionRoute.Auto && pairs && BFloat16Convolutions && InputQuantization is null
                && ConvolutionCost.GroupedBFloat16Pays(u, groups)) return ConvolutionRoute.BFloat16;
            if (!DirectConvolution.Fits(u, out_channels, groups)) return ConvolutionRoute.Reference;
            if (route == ConvolutionRoute.BFloat16) return PackedBFloat16Convolutions ? ConvolutionRoute.Direct : ConvolutionRoute.BFloat16;
            return route == ConvolutionRoute.Auto && !ConvolutionCost.GroupedPays(u, groups)
                ? ConvolutionRoute.Reference : ConvolutionRoute.Direct;
        }
        // Ungrouped weight-only layers onto small planes: the output channels in lanes where they pay, before the rest of the rule.
        if (route == ConvolutionRoute.Auto && UngroupedLanes(u)) return ConvolutionRoute.BFloat16;
        if (route == ConvolutionRoute.Auto)
            route = ConvolutionCost.Choose(u, out_channels, InputQuantizer is not null, BFloat16Convolutions, ConvolutionCost.Widest256, Vnni512Kernel.IsSupported, KernelThreads.Count == 1, PackedBFloat16Convolutions, BothBFloat16Convolutions);
        if (route == ConvolutionRoute.Direct && !DirectConvolution.Fits(u, out_channels)) return ConvolutionRoute.Reference;
        return route;
    }

    /// <summary>Whether the bfloat16 route runs on the packed kernels for <paramref name="input"/> (<see cref="PackedBFloat16(Im2Col)"/>; for the tests).</summary>
    internal bool BFloat16OnPackedKernels(Tensor input) =>
        Decide(input, ConvolutionRoute.BFloat16, out _, out var unfold) == ConvolutionRoute.BFloat16 && PackedBFloat16(unfold);

    /// <summary>
    /// Whether the bfloat16 route runs on the packed kernels for <paramref name="unfold"/> rather than on libtorch's
    /// bfloat16 convolution: a grouped layer where <see cref="GroupedPairs"/> unless libtorch's is taken for it
    /// (<see cref="GroupedOnLibTorch"/>); another where libtorch's failed its check
    /// (<see cref="QuantizedModule.PackedBFloat16Convolutions"/>), or, where both run, weight-only where
    /// <see cref="ConvolutionCost.PackedBFloat16BeatsLibTorch"/>.
    /// </summary>
    private bool PackedBFloat16(Im2Col unfold) =>
        groups > 1 ? GroupedPairs(unfold) && (!GroupedOnLibTorch(unfold) || GroupedLanesFirst(unfold))
        : PackedBFloat16Convolutions || UngroupedLanes(unfold) || (BothBFloat16Convolutions && InputQuantizer is null && ConvolutionCost.PackedBFloat16BeatsLibTorch(unfold, out_channels));

    /// <summary>
    /// Whether this ungrouped weight-only layer takes the bfloat16 route with the output channels in lanes for
    /// <paramref name="unfold"/> (<see cref="PackedMatMul.GroupedBFloat16"/> of one group): the CPU has AVX512-BF16,
    /// 512-bit vectors are in use, bfloat16 convolutions may run, the channel count is even and
    /// <see cref="PackedMatMul.UngroupedLanesPay"/>.
    /// </summary>
    private bool UngroupedLanes(Im2Col unfold) =>
        groups == 1 && InputQuantization is null && BFloat16Convolutions && Vnni512Kernel.BFloat16Supported && Float512.IsSupported
        && unfold.Channels % 2 == 0 && PackedMatMul.UngroupedLanesPay(unfold, out_channels);

    /// <summary>
    /// Whether this grouped weight-only layer takes the bfloat16 route with the output channels in lanes for
    /// <paramref name="unfold"/> (before libtorch's bfloat16 convolution and the rest of the grouped rule): pair images
    /// apply (<see cref="GroupedPairs"/>), bfloat16 convolutions may run and <see cref="PackedMatMul.LanesPay"/>.
    /// </summary>
    private bool GroupedLanes(Im2Col unfold) =>
        InputQuantization is null && BFloat16Convolutions && GroupedPairs(unfold) && PackedMatMul.LanesPay(unfold, out_channels, groups);

    /// <summary>
    /// Whether <see cref="GroupedLanes"/> comes before libtorch's bfloat16 convolution for <paramref name="unfold"/>: where
    /// that is not taken (<see cref="GroupedOnLibTorch"/>), or the weight has at most
    /// <see cref="ConvolutionCost.GroupedLanesOverLibTorchMaxWeight"/> elements.
    /// </summary>
    private bool GroupedLanesFirst(Im2Col unfold) =>
        GroupedLanes(unfold) && (!GroupedOnLibTorch(unfold) || (long)out_channels * (unfold.Rows / groups) <= ConvolutionCost.GroupedLanesOverLibTorchMaxWeight);

    /// <summary>
    /// Whether this grouped layer's bfloat16 route is libtorch's bfloat16 convolution for <paramref name="unfold"/>, where
    /// that passed <see cref="BFloat16Check"/> on a CPU with native bfloat16 (<see cref="ConvolutionCost.GroupedLibTorchBFloat16Pays"/>).
    /// </summary>
    private bool GroupedOnLibTorch(Im2Col unfold) =>
        NativeBFloat16 && BFloat16Check.Convolutions && ConvolutionCost.GroupedLibTorchBFloat16Pays(unfold, groups, InputQuantizer is not null);

    /// <summary>
    /// Whether this grouped layer can run in bfloat16 from pair images (<see cref="PackedMatMul.GroupedBFloat16"/>) for
    /// <paramref name="unfold"/>: a CPU with AVX512-BF16 (<see cref="Vnni512Kernel.BFloat16Supported"/>), 512-bit
    /// vectors in use (<see cref="Float512"/>) and an even number of input channels a group. Where this holds, the
    /// layer's bfloat16 route runs the pair images whether or not libtorch's own bfloat16 convolution passed its check;
    /// libtorch's runs only where the route is forced and this does not hold.
    /// </summary>
    private bool GroupedPairs(Im2Col unfold) =>
        groups > 1 && Vnni512Kernel.BFloat16Supported && Float512.IsSupported && PackedMatMul.GroupedBFloat16Fits(unfold, out_channels, groups);

    /// <summary>
    /// Whether this static W8A8 layer can run with the output channels in lanes (<see cref="QuadConvolution"/>, its
    /// <see cref="ConvolutionRoute.Quad"/> route) for <paramref name="unfold"/>: a static input whose zero point is one of
    /// its codes (padding takes it), int8 symmetric weights of one scale a row or tensor, the 512-bit VNNI kernel
    /// (<see cref="Vnni512Kernel.IsSupported"/>) and a geometry it takes (<see cref="QuadConvolution.Fits"/>).
    /// </summary>
    private bool Quads(Im2Col unfold) =>
        Vnni512Kernel.IsSupported && StaticInt8(unfold, out var act) && LinearKernels.ZeroPointIsACode(act)
        && weight.Spec.Scheme == QuantScheme.Symmetric && QuadConvolution.Fits(unfold, out_channels, groups);

    /// <summary>
    /// Whether this layer is static W8A8 (<paramref name="act"/>) with int8 weights of one scale a row or tensor, what the
    /// integer routes of a group's <paramref name="unfold"/> terms take.
    /// </summary>
    private bool StaticInt8(Im2Col unfold, [NotNullWhen(true)] out ActivationQuantization? act)
    {
        act = DynamicInput ? null : InputQuantization;
        if (act is null) return false;
        int terms = unfold.Rows / (int)groups;
        return LinearKernels.Format(weight.Spec, terms, out int groupSize) == WeightFormat.Int8 && groupSize == terms;
    }

    /// <summary>
    /// Whether this grouped static W8A8 layer can run exactly from pair images of codes (<see cref="PackedMatMul.GroupedCodes"/>,
    /// its <see cref="ConvolutionRoute.Kernel"/> route) for <paramref name="unfold"/>, where <see cref="GroupedPairs"/>
    /// holds (the caller checks it): int8 weights of one scale a row or tensor and group sums that stay exact in float32
    /// (<see cref="PackedMatMul.CodesExact"/>: codes of a symmetric weight up to 128 in magnitude, else 255; the kernel
    /// checks the zero points themselves and leaves the call to libtorch's route where they exceed that).
    /// </summary>
    private bool GroupedCodes(Im2Col unfold)
    {
        if (!StaticInt8(unfold, out var act)) return false;
        int weightMax = weight.Spec.Scheme == QuantScheme.Symmetric ? 128 : 255;
        return PackedMatMul.CodesExact(unfold.Rows / (int)groups, PackedMatMul.InputCodeMax(LinearKernels.InputCodes(act)), weightMax);
    }

    /// <summary>
    /// <see cref="DirectConvolution"/> on the float32 input (batched or not; its contiguous memory is the images
    /// <c>[n, C, H, W]</c> of <paramref name="unfold"/>), the output allocated in its final shape (<see cref="OnWeight"/>);
    /// null where the weight has no managed dequantization. Each tensor call costs about a microsecond, which counts here:
    /// the MNIST CNN's layers take 10-30 us.
    /// </summary>
    private unsafe Tensor? Direct(Tensor input, Im2Col unfold)
    {
        int columns = unfold.Rows / (int)groups;
        return OnWeight(input, unfold, columns, DirectConvolution.FusesInputQuantization(unfold), DirectConvolution.DequantizesByGroup(out_channels, groups, columns),
            &DirectConvolution.Run, &DirectConvolution.Run);
    }

    /// <summary>
    /// <paramref name="onQuantized"/> on the quantized weight read in place, the threads dequantizing the rows of
    /// <paramref name="weightColumns"/> values they read, where the layout has such a view and the kernel
    /// <paramref name="readsQuantized"/> this weight; else <paramref name="onFloat"/> on the weight dequantized whole for
    /// the call. Either way on the contiguous input and a new output in its final shape (<see cref="OnImages"/>), a static
    /// W8A8 input quantized by the kernel where it <paramref name="fusesInputQuantization"/>, else (and a dynamic one
    /// always) before it. Null where the weight has no managed dequantization.
    /// </summary>
    private unsafe Tensor? OnWeight(Tensor input, Im2Col unfold, int weightColumns, bool fusesInputQuantization, bool readsQuantized,
        delegate*<in WeightView, int, Im2Col, float*, float*, float*, InputFakeQuantization?, void> onQuantized,
        delegate*<float*, int, int, Im2Col, float*, float*, float*, InputFakeQuantization?, void> onFloat)
    {
        var fused = fusesInputQuantization ? StaticInputFakeQuantization() : null;
        int g = (int)groups;
        if (!DequantizesWholeWeight && readsQuantized)
        {
            Tensor? y = null;
            if (weight.Layout.WithWeightView((in WeightView w) =>
            {
                var view = w;
                y = OnImages(input, unfold, fused, (x, b, output) => onQuantized(view, g, unfold, x, b, output, fused));
            })) return y;
        }
        using var dequantized = torch.empty(out_channels, weightColumns);
        if (!weight.Layout.DequantizeInto(dequantized)) return null;
        float* pw = (float*)TensorSpans.Address(dequantized);
        int outputs = (int)out_channels;
        return OnImages(input, unfold, fused, (x, b, output) => onFloat(pw, outputs, g, unfold, x, b, output, fused));
    }

    /// <summary>A kernel call on the images, the bias (or null) and the output.</summary>
    private unsafe delegate void ImagesCall(float* images, float* bias, float* output);

    /// <summary>
    /// <paramref name="kernel"/> on the contiguous input (quantized first unless the kernel applies
    /// <paramref name="fused"/>) and a new output of its final shape, which it returns.
    /// </summary>
    private unsafe Tensor OnImages(Tensor input, Im2Col unfold, InputFakeQuantization? fused, ImagesCall kernel)
    {
        using var x = (fused is null ? QuantizeInput(input) : input).contiguous();
        var y = torch.empty(OutputShape(input, unfold));
        float* pb = bias is { } b ? (float*)TensorSpans.Address(b) : null;
        kernel((float*)TensorSpans.Address(x), pb, (float*)TensorSpans.Address(y));
        return y;
    }

    /// <summary>For the bench and tests: the small and depthwise kernels on the weight dequantized whole before the call, as for groups beyond <see cref="DirectConvolution.MaxGroupValues"/>.</summary>
    [ThreadStatic] internal static bool DequantizesWholeWeight;

    /// <summary>
    /// Whether the layer is depthwise: as many groups as input channels (more than one), each input channel feeding
    /// <c>out_channels / groups</c> output channels through a weight row of its own (<see cref="DepthwiseConvolution"/>).
    /// </summary>
    private bool IsDepthwise => groups > 1 && WeightShape[1] == 1;

    /// <summary>
    /// <see cref="DepthwiseConvolution"/> on the float32 input (batched or not; its contiguous memory is the images
    /// <c>[n, C, H, W]</c> of <paramref name="unfold"/>), the weight rows <c>[out, KH * KW]</c> dequantized by the threads that
    /// read them (<see cref="OnWeight"/>), a static W8A8 input fake-quantized by the kernel as it copies the planes; null
    /// where the weight has no managed dequantization.
    /// </summary>
    private unsafe Tensor? DepthwiseForward(Tensor input, Im2Col unfold)
    {
        int taps = unfold.KernelH * unfold.KernelW;
        return OnWeight(input, unfold, taps, fusesInputQuantization: true, DepthwiseConvolution.ReadsQuantized(out_channels, taps),
            &DepthwiseConvolution.Run, &DepthwiseConvolution.Run);
    }

    /// <summary>The output's shape for <paramref name="input"/> (batched or not) of geometry <paramref name="unfold"/>.</summary>
    private long[] OutputShape(Tensor input, Im2Col unfold) => (input.dim() == SpatialDims + 2, SpatialDims) switch
    {
        (true, 1) => [unfold.Images, out_channels, unfold.OutW],
        (true, _) => [unfold.Images, out_channels, unfold.OutH, unfold.OutW],
        (false, 1) => [out_channels, unfold.OutW],
        _ => [out_channels, unfold.OutH, unfold.OutW],
    };

    /// <summary>The unfolding of images <c>[n, C, H, W]</c> (a Conv1d's with H = 1), or null when the output would be empty or too large for the kernels.</summary>
    private Im2Col? Unfolding(long[] images)
    {
        bool one = SpatialDims == 1;
        long kh = one ? 1 : WeightShape[2], kw = WeightShape[^1];
        long sh = one ? 1 : _stride[0], ph = one ? 0 : _padding[0], dh = one ? 1 : _dilation[0];
        long sw = _stride[^1], pw = _padding[^1], dw = _dilation[^1];
        long h = images[2], w = images[3];
        if (h + 2 * ph < dh * (kh - 1) + 1 || w + 2 * pw < dw * (kw - 1) + 1) return null;
        long outH = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1, outW = (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
        if (outH * outW > int.MaxValue || images[1] * kh * kw > int.MaxValue) return null;
        return new Im2Col((int)images[1], (int)h, (int)w, (int)kh, (int)kw, (int)sh, (int)sw, (int)ph, (int)pw, (int)dh, (int)dw);
    }
}

/// <summary>Which implementation a <see cref="QuantizedConv"/> forward pass takes.</summary>
internal enum ConvolutionRoute
{
    /// <summary>The measured rule (<see cref="ConvolutionCost.Choose"/>).</summary>
    Auto,

    /// <summary>
    /// Unfold and the packed kernels wherever they apply; for a grouped static W8A8 layer whose sums stay exact, pair
    /// images of codes (<see cref="Kernels.PackedMatMul.GroupedCodes"/>), else (other grouped layers) the small kernel.
    /// </summary>
    Kernel,

    /// <summary>The small-convolution kernel (<see cref="Kernels.DirectConvolution"/>) on the weight dequantized group by group by the threads that read it; for a grouped layer that is not depthwise, group by group (the only managed route it has).</summary>
    Direct,

    /// <summary>Dequantize the weight and run libtorch's convolution (the differentiable reference path).</summary>
    Reference,

    /// <summary>
    /// The depthwise kernel (<see cref="Kernels.DepthwiseConvolution"/>), the only managed route of a depthwise layer:
    /// the rule takes it where <see cref="ConvolutionCost.DepthwisePays"/>, and every route but <see cref="Reference"/>
    /// forces it.
    /// </summary>
    Depthwise,

    /// <summary>
    /// libtorch's bfloat16 convolution on the weight and input rounded to bfloat16 (<see cref="QuantizedModule.UseBFloat16Compute"/>),
    /// or the packed kernels in bfloat16: where that failed its check (<see cref="QuantizedModule.PackedBFloat16Convolutions"/>),
    /// and, where both run, on the calls where they are faster (<see cref="ConvolutionCost.PackedBFloat16BeatsLibTorch"/>).
    /// </summary>
    BFloat16,

    /// <summary>
    /// Static W8A8 with the output channels in lanes (<see cref="Kernels.QuadConvolution"/>): int8 symmetric weights of
    /// one scale a row or tensor, grouped or not, on CPUs with the 512-bit VNNI kernel, exactly (the integer kernels'
    /// results); the rule takes it where <see cref="ConvolutionCost.QuadPays"/>. Where it does not apply, forcing it is
    /// forcing <see cref="Kernel"/>.
    /// </summary>
    Quad,
}
