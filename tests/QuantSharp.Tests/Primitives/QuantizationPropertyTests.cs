using System.Runtime.InteropServices;
using CsCheck;
using QuantSharp.Primitives;
using QuantSharp.Tensors;
using TorchSharp;

namespace QuantSharp.Tests.Primitives;

/// <summary>Properties that hold for all inputs (CsCheck), derived from first principles.</summary>
public class QuantizationPropertyTests
{
    private static readonly QuantType[] IntegerTypes = [QuantType.Int8, QuantType.UInt8, QuantType.Int4, QuantType.UInt4, QuantType.Int2, QuantType.UInt2];

    /// <summary>
    /// Inside the representable range [(qmin - zp) * scale, (qmax - zp) * scale], quantize then dequantize is off by at
    /// most half a step (plus float32 rounding: 1e-4 of a step).
    /// </summary>
    [Fact]
    public void RoundTripErrorIsAtMostHalfAStepInsideTheRange()
    {
        Gen.Select(Gen.Int[0, IntegerTypes.Length - 1], Gen.Float[1e-4f, 100f], Gen.Double[0, 1], Gen.Double[0, 1].Array[0, 300])
            .Sample((t, scale, zpFraction, u) =>
            {
                var type = IntegerTypes[t];
                var range = QuantRange.For(type);
                int zp = range.QMin + (int)Math.Round(zpFraction * (range.QMax - range.QMin));
                float lo = (range.QMin - zp) * scale, hi = (range.QMax - zp) * scale;
                float[] x = u.Select(v => Math.Clamp((float)(lo + v * (hi - lo)), lo, hi)).ToArray();
                var back = new float[x.Length];
                if (type.IsSigned())
                {
                    var q = new sbyte[x.Length];
                    Quantization.Quantize(x, scale, zp, range, q);
                    Quantization.Dequantize(q, scale, zp, back);
                }
                else
                {
                    var q = new byte[x.Length];
                    Quantization.Quantize(x, scale, zp, range, q);
                    Quantization.Dequantize(q, scale, zp, back);
                }
                for (int i = 0; i < x.Length; i++)
                {
                    if (MathF.Abs(x[i] - back[i]) > scale * (0.5f + 1e-4f))
                        throw new Exception($"{type} scale {scale} zp {zp}: x {x[i]:R} came back as {back[i]:R}.");
                }
            });
    }

    /// <summary>Unpack(Pack(v)) == v for values in range, for every packed width, signed and unsigned.</summary>
    [Fact]
    public void PackThenUnpackIsIdentity()
    {
        Gen.Select(Gen.Int[0, IntegerTypes.Length - 1], Gen.Int[0, 1000].Array[0, 257])
            .Sample((t, raw) =>
            {
                var type = IntegerTypes[t];
                int qmin = type.QMin(), qmax = type.QMax();
                sbyte[] values = raw.Select(r => (sbyte)(qmin + r % (qmax - qmin + 1))).ToArray();
                var packed = new byte[Packing.PackedLength(values.Length, type.Bits())];
                Packing.Pack(values, type.Bits(), packed);
                var back = new sbyte[values.Length];
                Packing.Unpack(packed, type.Bits(), type.IsSigned(), back);
                if (!values.SequenceEqual(back)) throw new Exception($"{type}: [{string.Join(",", values)}] came back as [{string.Join(",", back)}].");
            });
    }

    /// <summary>Pack(Unpack(bytes)) == bytes: every byte is a valid group of 4-bit or 2-bit values.</summary>
    [Fact]
    public void UnpackThenPackIsIdentity()
    {
        Gen.Select(Gen.Int[0, IntegerTypes.Length - 1], Gen.Byte.Array[0, 100])
            .Sample((t, bytes) =>
            {
                var type = IntegerTypes[t];
                int bits = type.Bits();
                var values = new sbyte[bytes.Length * (8 / bits)];
                Packing.Unpack(bytes, bits, type.IsSigned(), values);
                var again = new byte[bytes.Length];
                Packing.Pack(values, bits, again);
                if (!bytes.SequenceEqual(again)) throw new Exception($"{type}: bytes changed.");
            });
    }

    [Fact]
    public void PackingLayoutIsLowNibbleFirst()
    {
        var packed = new byte[2];
        Packing.Pack([-8, 7, 1], 4, packed);
        Assert.Equal(new byte[] { 0x78, 0x01 }, packed);
        var two = new byte[1];
        Packing.Pack([1, -2, 0, -1], 2, two);
        Assert.Equal((byte)(0b01 | 0b10 << 2 | 0b00 << 4 | 0b11 << 6), two[0]);
    }

    /// <summary>
    /// Per-group with one group is per-tensor: same scale, zero point and integers (one arithmetic, x * (1 / s),
    /// serves every granularity).
    /// </summary>
    [Fact]
    public void PerGroupWithOneGroupEqualsPerTensor()
    {
        Gen.Select(Gen.Int[0, IntegerTypes.Length - 1], Gen.Bool, Gen.Float[-50f, 50f].Array[1, 200])
            .Sample((t, affine, x) =>
            {
                var type = IntegerTypes[t];
                var scheme = affine ? QuantScheme.Affine : QuantScheme.Symmetric;
                using var input = torch.tensor(x, [1, x.Length]);
                using var g = QuantizedTensor.Quantize(input, new QuantSpec(type, scheme, new PerGroup(x.Length)));
                using var p = QuantizedTensor.Quantize(input, new QuantSpec(type, scheme));
                if (BitConverter.SingleToInt32Bits(g.ScaleValues[0]) != BitConverter.SingleToInt32Bits(p.ScaleValues[0]) || g.ZeroPointValues[0] != p.ZeroPointValues[0])
                    throw new Exception("qparams differ");
                using var gi = g.IntegerValues();
                using var pi = p.IntegerValues();
                int[] a = MemoryMarshal.Cast<byte, int>(gi.bytes).ToArray(), b = MemoryMarshal.Cast<byte, int>(pi.bytes).ToArray();
                for (int i = 0; i < a.Length; i++)
                {
                    if (a[i] != b[i])
                        throw new Exception($"{type} {scheme}: element {i} ({x[i]:R}) is {a[i]} per group, {b[i]} per tensor.");
                }
            });
    }

    /// <summary>Per-group with one group per row has the qparams of per-channel along axis 0.</summary>
    [Fact]
    public void PerGroupOfWholeRowsHasPerChannelQParams()
    {
        Gen.Select(Gen.Int[1, 8], Gen.Int[1, 40], Gen.Bool).Sample((rows, cols, affine) =>
        {
            using var input = torch.randn(rows, cols) * 3;
            var scheme = affine ? QuantScheme.Affine : QuantScheme.Symmetric;
            using var g = QuantizedTensor.Quantize(input, new QuantSpec(QuantType.Int8, scheme, new PerGroup(cols)));
            using var c = QuantizedTensor.Quantize(input, new QuantSpec(QuantType.Int8, scheme, new PerAxis(0)));
            if (!g.ScaleValues.SequenceEqual(c.ScaleValues) || !g.ZeroPointValues.SequenceEqual(c.ZeroPointValues))
                throw new Exception("qparams differ");
        });
    }
}
