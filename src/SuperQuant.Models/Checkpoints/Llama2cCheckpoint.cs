using SuperQuant.Core;
using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Checkpoints;

/// <summary>
/// karpathy/llama2.c's legacy .bin checkpoint: seven little-endian int32 (dim, hidden_dim, n_layers, n_heads,
/// n_kv_heads, vocab_size, seq_len; a negative vocab_size means an unshared classifier follows), then fp32 tensors
/// in run.c's order. llama2.c applies RoPE to interleaved pairs (x[2i], x[2i+1]); we hold weights in Hugging Face's
/// rotate-half layout, so wq and wk rows are permuted on load exactly as Hugging Face's conversion script does.
/// </summary>
public static class Llama2cCheckpoint
{
    public const int HeaderBytes = 7 * 4;

    public sealed record Header(int Dim, int HiddenDim, int NumLayers, int NumHeads, int NumKvHeads, int VocabSize, bool SharedClassifier, int SeqLen)
    {
        public int HeadSize => Dim / NumHeads;
        public int KvDim => Dim * NumKvHeads / NumHeads;

        /// <summary>Float count of the tensors that follow the header, in file order.</summary>
        public long FloatCount(bool includeClassifier)
        {
            // checked: a corrupt header's sizes can multiply past 2^63, and a wrapped (negative) total would pass the
            // file-size check and reach the allocator.
            checked
            {
                long d = Dim, h = HiddenDim, L = NumLayers, kv = KvDim, v = VocabSize;
                long n = v * d + L * d + L * d * d + 2 * L * d * kv + L * d * d + L * d + 3 * L * h * d + d + 2L * SeqLen * (HeadSize / 2);
                return includeClassifier && !SharedClassifier ? n + v * d : n;
            }
        }

        public LlamaConfig ToConfig() => new()
        {
            Architecture = "llama2.c",
            HiddenSize = Dim, IntermediateSize = HiddenDim, NumLayers = NumLayers, NumHeads = NumHeads, NumKvHeads = NumKvHeads,
            VocabSize = VocabSize, MaxPositionEmbeddings = SeqLen, RopeTheta = 10000.0, NormEps = 1e-5,
            TieWordEmbeddings = SharedClassifier,
            BosTokenId = 1, // llama2.c's sentencepiece vocabularies: 0 unk, 1 bos, 2 eos
        };
    }

    public static Header ReadHeader(string path)
    {
        if (!File.Exists(path)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"llama2.c checkpoint not found: {path}", path);
        DataFile.Require(path, "llama2.c checkpoint", ErrorCodes.CheckpointFormat);
        using var fs = File.OpenRead(path);
        if (fs.Length < HeaderBytes) throw Corrupt(path, $"file is {fs.Length} bytes, shorter than the {HeaderBytes}-byte header");
        var b = new byte[HeaderBytes];
        fs.ReadExactly(b);
        int I(int i) => BitConverter.ToInt32(b, 4 * i);
        int dim = I(0), hidden = I(1), layers = I(2), heads = I(3), kvHeads = I(4), vocab = I(5), seq = I(6);
        const int limit = 1 << 20; // far above any llama2.c model; rejects garbage before it is used as a size
        bool Ok(int v) => v > 0 && v <= limit;
        if (!Ok(dim) || !Ok(hidden) || !Ok(layers) || !Ok(heads) || !Ok(kvHeads) || vocab == 0 || Math.Abs((long)vocab) > limit || !Ok(seq))
            throw Corrupt(path, $"implausible header dim={dim} hidden_dim={hidden} n_layers={layers} n_heads={heads} n_kv_heads={kvHeads} " +
                $"vocab_size={vocab} seq_len={seq}");
        if (dim % heads != 0 || heads % kvHeads != 0 || (dim / heads) % 2 != 0)
            throw Corrupt(path, $"dim {dim}, n_heads {heads}, n_kv_heads {kvHeads} do not form whole, even-sized heads");
        var header = new Header(dim, hidden, layers, heads, kvHeads, Math.Abs(vocab), vocab > 0, seq);
        try { header.ToConfig().Validate(); }
        catch (InvalidDataException e) { throw Corrupt(path, e.Message); }
        long expected;
        try { expected = checked(HeaderBytes + 4 * header.FloatCount(includeClassifier: true)); }
        catch (OverflowException) { throw Corrupt(path, "its sizes multiply past any possible file size"); }
        if (fs.Length < expected) throw Corrupt(path, $"file is {fs.Length} bytes but its header implies {expected} (truncated?)");
        return header;
    }

    public static LlamaModel Load(string path, Device? device = null)
    {
        Header h = ReadHeader(path);
        LlamaConfig c = h.ToConfig();
        // A read buffer no larger than the file (1 MiB at most): tiny files do not pay for a megabyte.
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, (int)Math.Clamp(new FileInfo(path).Length, 4096, 1 << 20));
        fs.Position = HeaderBytes;
        var owned = new List<Tensor>();
        Tensor Next(params long[] shape)
        {
            Tensor t = torch.empty(shape, ScalarType.Float32);
            owned.Add(t);
            using Tensor flat = t.view(-1);
            const long chunk = 1 << 26;
            for (long s = 0; s < flat.shape[0]; s += chunk)
            {
                using Tensor piece = flat.narrow(0, s, Math.Min(chunk, flat.shape[0] - s));
                fs.ReadExactly(piece.bytes);
            }
            return t;
        }
        try
        {
            long d = h.Dim, hid = h.HiddenDim, L = h.NumLayers, kv = h.KvDim;
            Tensor embed = Next(h.VocabSize, d);
            Tensor rmsAtt = Next(L, d);
            Tensor wq = Next(L, d, d);
            Tensor wk = Next(L, kv, d);
            Tensor wv = Next(L, kv, d);
            Tensor wo = Next(L, d, d);
            Tensor rmsFfn = Next(L, d);
            Tensor w1 = Next(L, hid, d);
            Tensor w2 = Next(L, d, hid);
            Tensor w3 = Next(L, hid, d);
            Tensor rmsFinal = Next(d);
            fs.Position += 4L * h.SeqLen * (h.HeadSize / 2) * 2; // freq_cis_real/imag: recomputed from theta instead
            Tensor? wcls = h.SharedClassifier ? null : Next(h.VocabSize, d);

            var layers = new LlamaLayerWeights[L];
            for (int l = 0; l < L; l++)
            {
                layers[l] = new LlamaLayerWeights
                {
                    AttnNorm = rmsAtt[l].clone(),
                    Wq = InterleavedToHalfRope(wq[l], h.NumHeads),
                    Wk = InterleavedToHalfRope(wk[l], h.NumKvHeads),
                    Wv = wv[l].clone(), Wo = wo[l].clone(),
                    FfnNorm = rmsFfn[l].clone(),
                    WGate = w1[l].clone(), WDown = w2[l].clone(), WUp = w3[l].clone(),
                };
            }
            // By reference: TorchSharp's Tensor.Equals compares contents and touches native handles.
            foreach (var t in new[] { rmsAtt, wq, wk, wv, wo, rmsFfn, w1, w2, w3 }) { owned.RemoveAll(x => ReferenceEquals(x, t)); t.Dispose(); }
            var weights = new LlamaWeights { TokenEmbedding = embed, FinalNorm = rmsFinal, LmHead = wcls, Layers = layers };
            NonFiniteCheck.ThrowIfAny(weights, path);
            if (device is not null && device.type != DeviceType.CPU) weights = MoveTo(weights, device);
            return new LlamaModel(c, weights);
        }
        catch
        {
            foreach (var t in owned) t.Dispose();
            throw;
        }
    }

    /// <summary>Hugging Face's permute(): rows of each head reordered from interleaved pairs to two halves.</summary>
    public static Tensor InterleavedToHalfRope(Tensor w, int heads)
    {
        long rows = w.shape[0], cols = w.shape[1];
        return w.view(heads, rows / heads / 2, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous();
    }

    static LlamaWeights MoveTo(LlamaWeights w, Device device)
    {
        Tensor? M(Tensor? t) => t?.to(device);
        return new LlamaWeights
        {
            TokenEmbedding = M(w.TokenEmbedding)!, FinalNorm = M(w.FinalNorm), LmHead = M(w.LmHead),
            Layers = w.Layers.Select(l => l!).Select(l => new LlamaLayerWeights
            {
                AttnNorm = M(l.AttnNorm), Wq = M(l.Wq)!, Wk = M(l.Wk)!, Wv = M(l.Wv)!, Wo = M(l.Wo)!,
                FfnNorm = M(l.FfnNorm), WGate = M(l.WGate)!, WUp = M(l.WUp)!, WDown = M(l.WDown)!,
            }).ToArray(),
        };
    }

    static SuperQuantException Corrupt(string path, string what) =>
        new(ErrorCodes.CheckpointFormat, $"{path} is not a valid llama2.c checkpoint ({what}); expected {ModelLoader.Accepted}", path);
}
