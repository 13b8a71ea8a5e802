using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace TrainMnist;

/// <summary>
/// Just enough of a safetensors writer for this example (float32 tensors + string metadata), kept internal here:
/// 8-byte little-endian header length, JSON header padded with spaces to a multiple of 8, then the tensor bytes
/// in order. Written to a temporary file in the same folder and renamed into place.
/// </summary>
internal static class MiniSafetensorsWriter
{
    public static void Write(string path, IReadOnlyList<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        var blobs = new List<byte[]>();
        using var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            foreach (var (k, v) in metadata) json.WriteString(k, v);
            json.WriteEndObject();
            long offset = 0;
            foreach (var (name, t) in tensors)
            {
                if (t.dtype != ScalarType.Float32)
                    throw new ArgumentException($"tensor '{name}' is {t.dtype}; this writer only writes float32.", nameof(tensors));
                using var c = t.detach().cpu().contiguous();
                byte[] bytes = c.bytes.ToArray();
                blobs.Add(bytes);
                json.WriteStartObject(name);
                json.WriteString("dtype", "F32");
                json.WriteStartArray("shape");
                foreach (var d in t.shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes.Length);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes.Length;
            }
            json.WriteEndObject();
        }
        while (header.Length % 8 != 0) header.WriteByte((byte)' ');

        string full = Path.GetFullPath(path);
        string tmp = Path.Combine(Path.GetDirectoryName(full)!, "." + Path.GetFileName(full) + ".tmp");
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
        {
            fs.Write(BitConverter.GetBytes(header.Length));
            header.Position = 0;
            header.CopyTo(fs);
            foreach (var b in blobs) fs.Write(b);
        }
        File.Move(tmp, full, overwrite: true);
    }
}
