using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SuperQuant.Core.Evaluation;

/// <summary>
/// The unquantized model's predictions over an evaluation stream, recorded once and streamed back window by window, so
/// every artifact of a model is compared against the same baseline and evaluation memory does not grow with the token
/// count. Like llama.cpp's `--kl-divergence-base` file, each scored token keeps its logits as 16-bit codes over
/// [max - 16, max] with a per-row scale (logits further below the maximum have probability under e^-16 of the top
/// token's and are clamped), plus its exact argmax and exact NLL of the actual next token, so reference perplexity and
/// top-1 agreement are not affected by the compression. The KL divergence it gives differs from the fp32 one by far less
/// than any gate limit (tested).
/// <para>A cache proves its integrity before it is used: the header carries the SHA-256 of every row, checked when the
/// file is opened (a damaged or edited cache is recomputed, never trusted: a changed NLL would change a perplexity
/// gate's verdict), and each row is range-checked when read.</para>
/// <code>
/// header: "SQRF" u32 version=2 | i32 vocab | i32 tokens | i32 context | i32 stride | i64 scored | byte[32] rows SHA-256 | i32 keyLength | key (UTF-8),
/// padded to 8
/// row (per scored token): f32 min | f32 scale | i32 argmax | f32 nll | i16[vocab] code - 32768 | pad to 4 bytes
/// </code>
/// </summary>
public sealed class ReferenceFile : IDisposable
{
    public const uint Magic = 0x46525153; // "SQRF"
    public const int Version = 2;
    const int FixedHeader = 4 + 4 + 4 * 4 + 8 + 32 + 4; // through keyLength
    /// <summary>The range kept below each row's maximum logit (llama.cpp's kl-divergence-base uses 16).</summary>
    public const float Range = 16f;

    readonly FileStream _stream;
    readonly long _dataStart;

    public string Path { get; }
    public string Key { get; }
    public int Vocab { get; }
    public int TokenCount { get; }
    public int Context { get; }
    public int Stride { get; }
    public long Scored { get; }
    public IReadOnlyList<EvalWindow> Windows { get; }
    public long RowBytes => RowBytesFor(Vocab);

    static long RowBytesFor(int vocab) => 16 + ((2L * vocab + 3) / 4 * 4);

    ReferenceFile(string path, FileStream stream, string key, int vocab, int tokens, int context, int stride, long scored, long dataStart)
    {
        Path = path; _stream = stream; Key = key; Vocab = vocab; TokenCount = tokens;
        Context = context; Stride = stride; Scored = scored; _dataStart = dataStart;
        Windows = EvalWindow.Over(tokens, context, stride).ToList();
    }

    /// <summary>Runs <paramref name="model"/> over the windows of <paramref name="tokens"/> and writes the file
    /// (through a temp file and a rename).</summary>
    public static void Record(string path, string key, LogitsFunction model, IReadOnlyList<int> tokens, int context, int stride, int vocab,
        EvalProgress? progress = null, CancellationToken cancel = default)
    {
        if (tokens.Count < 2) throw new ArgumentException($"evaluation needs at least 2 tokens, got {tokens.Count}");
        var windows = EvalWindow.Over(tokens.Count, context, stride).ToList();
        long scored = tokens.Count - 1;
        byte[] keyBytes = Encoding.UTF8.GetBytes(key);
        long header = HeaderBytes(keyBytes.Length);
        AtomicFile.Write(path, header + scored * RowBytesFor(vocab), fs =>
        {
            using var bw = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true);
            bw.Write(Magic); bw.Write(Version); bw.Write(vocab); bw.Write(tokens.Count); bw.Write(context); bw.Write(stride); bw.Write(scored);
            long hashAt = fs.Position;
            bw.Write(new byte[32]); // the rows' SHA-256, written once they are
            bw.Write(keyBytes.Length); bw.Write(keyBytes);
            bw.Write(new byte[header - FixedHeader - keyBytes.Length]);
            bw.Flush();
            using var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
            var row = new byte[RowBytesFor(vocab)];
            for (int wi = 0; wi < windows.Count; wi++)
            {
                cancel.ThrowIfCancellationRequested();
                using var scope = torch.NewDisposeScope();
                EvalWindow w = windows[wi];
                (Tensor input, Tensor targets) = EvalWindow.Slice(tokens, w);
                Tensor logits = model(input).squeeze(0).narrow(0, w.FirstScored, targets.shape[0]).to(ScalarType.Float32).cpu();
                if (logits.shape[1] != vocab) throw new ArgumentException($"the model gives {logits.shape[1]} logits, the file was opened for {vocab}");
                Tensor max = logits.amax(new long[] { -1 }, keepdim: true);
                Tensor min = torch.maximum(logits.amin(new long[] { -1 }, keepdim: true), max - Range);
                Tensor scale = ((max - min) / 65535f).clamp(min: 1e-12f);
                Tensor codes = ((torch.maximum(logits, min) - min) / scale).round().clamp(0,
                    65535).to(ScalarType.Int32).sub_(32768).to(ScalarType.Int16).contiguous();
                float[] mins = min.squeeze(1).data<float>().ToArray(), scales = scale.squeeze(1).data<float>().ToArray(); // host: logits.cpu() above
                long[] argmax = logits.argmax(-1).data<long>().ToArray(); // host
                double[] nll = (-F.log_softmax(logits.to(ScalarType.Float64), -1).gather(1, targets.unsqueeze(1))).squeeze(1).data<double>().ToArray(); // host
                ReadOnlySpan<byte> codeBytes = codes.bytes; // host
                for (int i = 0; i < mins.Length; i++)
                {
                    BitConverter.TryWriteBytes(row.AsSpan(0), mins[i]);
                    BitConverter.TryWriteBytes(row.AsSpan(4), scales[i]);
                    BitConverter.TryWriteBytes(row.AsSpan(8), (int)argmax[i]);
                    BitConverter.TryWriteBytes(row.AsSpan(12), (float)nll[i]);
                    codeBytes.Slice(i * 2 * vocab, 2 * vocab).CopyTo(row.AsSpan(16));
                    fs.Write(row);
                    sha.AppendData(row);
                }
                progress?.Invoke(wi + 1, windows.Count);
            }
            long end = fs.Position;
            fs.Position = hashAt;
            fs.Write(sha.GetHashAndReset());
            fs.Position = end;
        });
    }

    static long HeaderBytes(int keyLength) => (FixedHeader + keyLength + 7) / 8 * 8;

    /// <summary>Opens a recorded file; null when it is missing, damaged, or was recorded for other inputs
    /// (a different key or window plan). Never trusted blindly: the size must match the header exactly.</summary>
    public static ReferenceFile? TryOpen(string path, string expectedKey, int vocab, int tokens, int context, int stride)
    {
        if (!File.Exists(path) || FileKind.NotARegularFile(path) is not null) return null; // a FIFO there would block the open
        FileStream? fs = null;
        try
        {
            fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            using var br = new BinaryReader(fs, Encoding.UTF8, leaveOpen: true);
            if (fs.Length < FixedHeader || br.ReadUInt32() != Magic || br.ReadInt32() != Version) { fs.Dispose(); return null; }
            int v = br.ReadInt32(), t = br.ReadInt32(), c = br.ReadInt32(), s = br.ReadInt32();
            long scored = br.ReadInt64();
            byte[] rowsHash = br.ReadBytes(32);
            int keyLength = br.ReadInt32();
            if (keyLength < 0 || keyLength > 4096 || FixedHeader + keyLength > fs.Length) { fs.Dispose(); return null; }
            string key = Encoding.UTF8.GetString(br.ReadBytes(keyLength));
            long header = HeaderBytes(keyLength);
            if (key != expectedKey || v != vocab || t != tokens || c != context || s != stride || scored != tokens - 1
                || fs.Length != header + scored * RowBytesFor(vocab))
            {
                fs.Dispose();
                return null;
            }
            // Every row's bytes against the hash recorded with them: one sequential read, a fraction of the time the
            // evaluation it saves takes.
            fs.Position = header;
            using (var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256))
            {
                var buffer = new byte[1 << 20];
                int n;
                while ((n = fs.Read(buffer)) > 0) sha.AppendData(buffer, 0, n);
                if (!sha.GetHashAndReset().AsSpan().SequenceEqual(rowsHash)) { fs.Dispose(); return null; }
            }
            return new ReferenceFile(path, fs, key, v, t, c, s, scored, header);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            fs?.Dispose();
            return null;
        }
    }

    /// <summary>The reference rows of window <paramref name="windowIndex"/>: decoded logits [n, vocab] (float32), the
    /// exact argmax and NLL per row.</summary>
    public (Tensor Logits, long[] Argmax, double[] Nll) ReadWindow(int windowIndex)
    {
        EvalWindow w = Windows[windowIndex];
        long firstRow = 0;
        for (int i = 0; i < windowIndex; i++) firstRow += Windows[i].Length - 1 - Windows[i].FirstScored;
        int n = w.Length - 1 - w.FirstScored;
        var bytes = new byte[n * RowBytes];
        lock (_stream)
        {
            _stream.Position = _dataStart + firstRow * RowBytes;
            _stream.ReadExactly(bytes);
        }
        var codes = new short[(long)n * Vocab];
        var mins = new float[n];
        var scales = new float[n];
        var argmax = new long[n];
        var nll = new double[n];
        for (int i = 0; i < n; i++)
        {
            var row = bytes.AsSpan((int)(i * RowBytes), (int)RowBytes);
            mins[i] = BitConverter.ToSingle(row);
            scales[i] = BitConverter.ToSingle(row[4..]);
            argmax[i] = BitConverter.ToInt32(row[8..]);
            nll[i] = BitConverter.ToSingle(row[12..]);
            if (argmax[i] < 0 || argmax[i] >= Vocab || !float.IsFinite(mins[i]) || !float.IsFinite(scales[i]) || !(scales[i] >= 0)
                || !double.IsFinite(nll[i]) || nll[i] < 0)
                throw new SuperQuantException(ErrorCodes.ArtifactFormat,
                    $"{Path}: row {firstRow + i} of the reference cache changed after it was checked; delete it or rerun", Path);
            MemoryMarshal.Cast<byte, short>(row.Slice(16, 2 * Vocab)).CopyTo(codes.AsSpan(i * Vocab, Vocab));
        }
        using var scope = torch.NewDisposeScope();
        // host: decoded from file bytes; DivergenceAccumulator.Add moves it to the model's device.
        Tensor c = torch.tensor(codes, new long[] { n, Vocab }).to(ScalarType.Float32) + 32768f;
        Tensor logits = c * torch.tensor(scales).unsqueeze(1) + torch.tensor(mins).unsqueeze(1); // host: as above
        return (logits.MoveToOuterDisposeScope(), argmax, nll);
    }

    public void Dispose() => _stream.Dispose();
}
