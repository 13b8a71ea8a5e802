namespace QuantSharp.Primitives;

/// <summary>
/// 4-bit block quantization in ONNX Runtime's <c>MatMulNBits</c> format (what <c>quantize_matmul_4bits</c> /
/// MLAS blockwise quantization produce), reimplemented from its documented arithmetic so that the bytes are equal.
/// </summary>
/// <remarks>
/// <para>The weight is <c>[K, N]</c> row-major (input features by output features). Each column <c>n</c> is cut
/// into <c>ceil(K / blockSize)</c> blocks along K; each block gets one scale and, when asymmetric, one 4-bit zero point.
/// Values are stored unsigned in [0, 15].</para>
/// <list type="bullet">
/// <item>Asymmetric: range widened to include 0; <c>scale = (max - min) / 15</c>;
/// zero point <c>= round_half_away(-min / scale)</c> clamped to [0, 15] (0 when the scale is 0).</item>
/// <item>Symmetric: <c>m</c> = the value of largest magnitude (the minimum on a tie), <c>scale = -m / 8</c>, implicit zero
/// point 8 (no zero-point bytes are written, as ONNX Runtime).</item>
/// <item>Values: <c>clamp(round_half_away(x * (1 / scale) + zp), 0, 15)</c> in float32 (0 when the scale is 0).</item>
/// </list>
/// <para>Layout: <c>packed[N][blocks][blockSize / 2]</c>, two values per byte, low nibble first; <c>scales[N * blocks]</c>;
/// zero points two per byte, low nibble first, <c>[N][ceil(blocks / 2)]</c>.</para>
/// </remarks>
public static class BlockQuantization
{
    /// <summary>Number of K blocks for <paramref name="k"/> rows.</summary>
    public static int BlockCount(int k, int blockSize) => (k + blockSize - 1) / blockSize;

    /// <summary>Bytes of packed data: <c>N * blocks * blockSize / 2</c>.</summary>
    public static int PackedLength(int k, int n, int blockSize) => n * BlockCount(k, blockSize) * (blockSize / 2);

    /// <summary>Bytes of packed zero points: <c>N * ceil(blocks / 2)</c>.</summary>
    public static int ZeroPointLength(int k, int n, int blockSize) => n * ((BlockCount(k, blockSize) + 1) / 2);

    /// <summary>Quantizes a <c>[K, N]</c> float32 weight to ONNX Runtime's 4-bit MatMulNBits blocks.</summary>
    /// <param name="weight">Row-major <c>[K, N]</c> values.</param>
    /// <param name="k">Rows (input features).</param>
    /// <param name="n">Columns (output features).</param>
    /// <param name="blockSize">Block length along K: a power of two, at least 16.</param>
    /// <param name="symmetric">Symmetric blocks (implicit zero point 8) or asymmetric (stored zero points).</param>
    /// <param name="packed">Receives <see cref="PackedLength"/> bytes.</param>
    /// <param name="scales">Receives <c>N * blocks</c> scales.</param>
    /// <param name="zeroPoints">Receives <see cref="ZeroPointLength"/> bytes when asymmetric; unused (may be empty) when symmetric.</param>
    /// <exception cref="ArgumentException">Sizes do not match or the block size is not supported.</exception>
    public static void QuantizeMatMul4Bits(ReadOnlySpan<float> weight, int k, int n, int blockSize, bool symmetric,
        Span<byte> packed, Span<float> scales, Span<byte> zeroPoints)
    {
        if (blockSize < 16 || (blockSize & (blockSize - 1)) != 0)
            throw new ArgumentException($"Block size {blockSize} is not supported; use a power of two of at least 16 (e.g. 32, 64, 128).", nameof(blockSize));
        if (k <= 0 || n <= 0 || (long)k * n != weight.Length)
            throw new ArgumentException($"weight has {weight.Length} values, not K x N = {k} x {n}.", nameof(weight));
        int blocks = BlockCount(k, blockSize);
        int half = blockSize / 2;
        if (packed.Length < PackedLength(k, n, blockSize))
            throw new ArgumentException($"packed needs {PackedLength(k, n, blockSize)} bytes, has {packed.Length}.", nameof(packed));
        if (scales.Length < n * blocks)
            throw new ArgumentException($"scales needs {n * blocks} values, has {scales.Length}.", nameof(scales));
        if (!symmetric && zeroPoints.Length < ZeroPointLength(k, n, blockSize))
            throw new ArgumentException($"zeroPoints needs {ZeroPointLength(k, n, blockSize)} bytes, has {zeroPoints.Length}.", nameof(zeroPoints));

        int zpPerColumn = (blocks + 1) / 2;
        Span<byte> values = stackalloc byte[blockSize];
        for (int col = 0; col < n; col++)
        {
            for (int b = 0; b < blocks; b++)
            {
                int k0 = b * blockSize, k1 = Math.Min(k, k0 + blockSize);
                float min = float.MaxValue, max = -float.MaxValue;
                for (int r = k0; r < k1; r++)
                {
                    float v = weight[r * n + col];
                    if (v < min) min = v;
                    if (v > max) max = v;
                }
                float scale;
                byte zp;
                if (symmetric)
                {
                    float m = MathF.Abs(max) > MathF.Abs(min) ? max : min;
                    scale = -m / 8f;
                    zp = 8;
                }
                else
                {
                    min = MathF.Min(min, 0f);
                    max = MathF.Max(max, 0f);
                    scale = (max - min) / 15f;
                    float zpf = scale != 0f ? 0f - min / scale : min;
                    zp = zpf < 0f ? (byte)0 : zpf > 15f ? (byte)15 : (byte)MathF.Round(zpf, MidpointRounding.AwayFromZero);
                    int zi = col * zpPerColumn + b / 2;
                    zeroPoints[zi] = (b & 1) == 0 ? (byte)((zeroPoints[zi] & 0xF0) | zp) : (byte)((zeroPoints[zi] & 0x0F) | (zp << 4));
                }
                scales[col * blocks + b] = scale;

                float reciprocal = scale != 0f ? 1f / scale : 0f;
                values.Clear();
                for (int r = k0; r < k1; r++)
                {
                    float q = MathF.Round(weight[r * n + col] * reciprocal + zp, MidpointRounding.AwayFromZero);
                    values[r - k0] = (byte)Math.Clamp(q, 0f, 15f);
                }
                var dst = packed.Slice((col * blocks + b) * half, half);
                for (int j = 0; j < half; j++)
                    dst[j] = (byte)(values[2 * j] | (values[2 * j + 1] << 4));
            }
            // An odd number of blocks leaves the high nibble of the last zero-point byte: ONNX Runtime fills it with 8.
            if (!symmetric && (blocks & 1) == 1)
                zeroPoints[col * zpPerColumn + blocks / 2] = (byte)((zeroPoints[col * zpPerColumn + blocks / 2] & 0x0F) | 0x80);
        }
    }
}
