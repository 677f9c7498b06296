using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using SuperQuant.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Safetensors;

/// <summary>One tensor's entry in a safetensors header. Offsets are relative to the start of the data section.</summary>
public sealed record SafetensorsEntry(string Name, string DType, ScalarType ScalarType, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// Reads a .safetensors file: 8-byte little-endian header length, a JSON header, raw little-endian tensor bytes.
/// Written here rather than taken from a library because no maintained .NET safetensors reader exists on the feed.
/// The header is validated completely before any tensor is read (dtype, shape vs byte count, offsets within the file,
/// no overlaps), so a corrupt or hostile file gives a coded error naming the file and tensor, never a huge allocation
/// or an out-of-range read. Tensors are streamed from disk one at a time straight into their torch storage.
/// </summary>
public sealed class SafetensorsFile : IDisposable
{
    /// <summary>Headers larger than this are rejected before they are read (real ones are well under 10 MB).</summary>
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    readonly SafeFileHandle _handle;
    readonly long _dataStart;
    public string Path { get; }
    public IReadOnlyDictionary<string, SafetensorsEntry> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    readonly long _openedLength;
    readonly DateTime _openedWrite;

    SafetensorsFile(string path, SafeFileHandle handle, long dataStart, Dictionary<string, SafetensorsEntry> tensors, Dictionary<string, string> metadata)
    {
        Path = path; _handle = handle; _dataStart = dataStart; Tensors = tensors; Metadata = metadata;
        _openedLength = RandomAccess.GetLength(handle);
        _openedWrite = File.GetLastWriteTimeUtc(handle);
    }

    /// <summary>Throws SQ2001 when the open file was written since it was opened (same inode: its length or
    /// modification time moved). A layer-streamed run reads each block again on every pass; weights that change
    /// between passes would make an artifact no single checkpoint produced. (A file replaced by a rename is not
    /// seen here, and does not matter: the open handle keeps reading the original.)</summary>
    public void CheckUnchanged()
    {
        if (RandomAccess.GetLength(_handle) != _openedLength || File.GetLastWriteTimeUtc(_handle) != _openedWrite)
            throw new SuperQuantException(ErrorCodes.CheckpointFormat,
                $"{Path} was modified while this run was reading it; run again on a checkpoint nothing writes to", Path);
    }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"safetensors file not found: {path}", path);
        SafeFileHandle handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            long fileLength = RandomAccess.GetLength(handle);
            if (fileLength < 8) throw Corrupt(path, $"file is {fileLength} bytes, shorter than the 8-byte header length");
            Span<byte> lenBytes = stackalloc byte[8];
            RandomAccess.Read(handle, lenBytes, 0);
            ulong headerLen = BitConverter.ToUInt64(lenBytes);
            if (headerLen > (ulong)Math.Min(MaxHeaderBytes, fileLength - 8))
                throw Corrupt(path, $"header length {headerLen} exceeds the file ({fileLength} bytes) or the {MaxHeaderBytes}-byte limit");
            var header = new byte[headerLen];
            if (RandomAccess.Read(handle, header, 8) != header.Length) throw Corrupt(path, "file truncated inside the header");
            long dataStart = 8 + (long)headerLen;
            var (tensors, metadata) = ParseHeader(path, header, fileLength - dataStart);
            return new SafetensorsFile(path, handle, dataStart, tensors, metadata);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    static string Excerpt(string s) => s.Length <= 80 ? s : s[..77] + "...";

    static readonly System.Text.UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    static (Dictionary<string, SafetensorsEntry>, Dictionary<string, string>) ParseHeader(string path, byte[] header, long dataLength)
    {
        try { StrictUtf8.GetCharCount(header); }
        catch (System.Text.DecoderFallbackException) { throw Corrupt(path, "header is not valid UTF-8"); }
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (JsonException e) { throw Corrupt(path, $"header is not valid JSON: {e.Message}"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Corrupt(path, "header is not a JSON object");
            var tensors = new Dictionary<string, SafetensorsEntry>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (JsonProperty p in doc.RootElement.EnumerateObject())
            {
                if (!seen.Add(p.Name)) throw Corrupt(path, $"'{Excerpt(p.Name)}' appears twice in the header (the reference implementation refuses " +
                    $"duplicate names)");
                if (p.Name == "__metadata__")
                {
                    if (p.Value.ValueKind != JsonValueKind.Object) throw Corrupt(path, "__metadata__ is not an object");
                    foreach (JsonProperty m in p.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String) throw Corrupt(path, $"__metadata__ value '{m.Name}' is not a string");
                        metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                tensors[p.Name] = ParseEntry(path, p.Name, p.Value, dataLength);
            }
            // As the reference implementation checks: sorted by offset, the tensors tile the data section exactly, with
            // no overlap, no gap and nothing after the last one.
            SafetensorsEntry? previous = null;
            long expected = 0;
            foreach (var e in tensors.Values.OrderBy(e => e.Begin).ThenBy(e => e.End))
            {
                if (previous != null && e.Begin < previous.End)
                    throw Corrupt(path, $"tensors '{previous.Name}' [{previous.Begin}, {previous.End}) and '{e.Name}' [{e.Begin}, {e.End}) overlap");
                if (e.Begin != expected)
                    throw Corrupt(path, $"tensor '{e.Name}' starts at {e.Begin}, but the data before it ends at {expected} (gaps are not allowed)");
                expected = e.End;
                previous = e;
            }
            if (expected != dataLength)
                throw Corrupt(path, $"the tensors cover {expected} bytes of a {dataLength}-byte data section (bytes after the last tensor are not allowed)");
            return (tensors, metadata);
        }
    }

    static SafetensorsEntry ParseEntry(string path, string name, JsonElement v, long dataLength)
    {
        if (v.ValueKind != JsonValueKind.Object) throw Corrupt(path, $"tensor '{name}': entry is not an object");
        if (!v.TryGetProperty("dtype", out JsonElement dt) || dt.ValueKind != JsonValueKind.String)
            throw Corrupt(path, $"tensor '{name}': missing string 'dtype'");
        string dtype = dt.GetString()!;
        if (!SafetensorsDType.TryGet(dtype, out ScalarType st, out int size))
            throw Corrupt(path, $"tensor '{name}': unknown dtype '{dtype}' (supported: {string.Join(", ", SafetensorsDType.Names)})");
        if (!v.TryGetProperty("shape", out JsonElement sh) || sh.ValueKind != JsonValueKind.Array)
            throw Corrupt(path, $"tensor '{name}': missing array 'shape'");
        var shape = new long[sh.GetArrayLength()];
        long elements = 1;
        int i = 0;
        foreach (JsonElement d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw Corrupt(path, $"tensor '{name}': shape entries must be non-negative integers");
            shape[i++] = dim;
            // Checked against the data section before any multiplication can overflow or allocate.
            if (dim != 0 && elements > dataLength / dim) elements = long.MaxValue;
            else elements *= dim;
        }
        if (!v.TryGetProperty("data_offsets", out JsonElement off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Corrupt(path, $"tensor '{name}': 'data_offsets' must be [begin, end]");
        if (off[0].ValueKind != JsonValueKind.Number || off[1].ValueKind != JsonValueKind.Number
            || !off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw Corrupt(path, $"tensor '{name}': data_offsets must satisfy 0 <= begin <= end");
        if (end > dataLength)
            throw Corrupt(path, $"tensor '{name}': data_offsets [{begin}, {end}) run past the data section ({dataLength} bytes; file truncated?)");
        if (elements == long.MaxValue || elements * size != end - begin)
            throw Corrupt(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] of {dtype} needs " +
                $"{(elements == long.MaxValue ? "more than the file's" : (elements * size).ToString())} bytes but data_offsets span {end - begin}");
        return new SafetensorsEntry(name, dtype, st, shape, begin, end);
    }

    static SuperQuantException Corrupt(string path, string what) =>
        new(ErrorCodes.CheckpointFormat, $"invalid safetensors file {path}: {what}", path);

    public bool Contains(string name) => Tensors.ContainsKey(name);

    public SafetensorsEntry Entry(string name) =>
        Tensors.TryGetValue(name, out var e) ? e
        : throw new SuperQuantException(ErrorCodes.CheckpointMissingTensor, $"tensor '{name}' not found in {Path}", Path);

    /// <summary>Reads a tensor in its stored dtype, or converted to <paramref name="convertTo"/>.</summary>
    public Tensor Read(string name, ScalarType? convertTo = null)
    {
        SafetensorsEntry e = Entry(name);
        Tensor t = torch.empty(e.Shape, e.ScalarType);
        try
        {
            ReadInto(e, t);
            if (convertTo is ScalarType target && target != e.ScalarType)
            {
                Tensor converted = t.to_type(target);
                t.Dispose();
                return converted;
            }
            return t;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    /// <summary>Streams the tensor's bytes from disk into a contiguous CPU tensor of the same dtype and size.</summary>
    void ReadInto(SafetensorsEntry e, Tensor destination)
    {
        const long chunkElements = 1 << 26; // spans are int-sized: copy huge tensors in pieces
        using Tensor flat = destination.view(-1);
        long n = flat.shape[0];
        long elementSize = (e.End - e.Begin) / Math.Max(n, 1);
        for (long start = 0; start < n; start += chunkElements)
        {
            long count = Math.Min(chunkElements, n - start);
            using Tensor chunk = flat.narrow(0, start, count);
            Span<byte> span = chunk.bytes;
            long fileOffset = _dataStart + e.Begin + start * elementSize;
            int read = 0;
            while (read < span.Length)
            {
                int got = RandomAccess.Read(_handle, span[read..], fileOffset + read);
                if (got == 0) throw Corrupt(Path, $"tensor '{e.Name}': unexpected end of file");
                read += got;
            }
        }
    }

    public void Dispose() => _handle.Dispose();
}
