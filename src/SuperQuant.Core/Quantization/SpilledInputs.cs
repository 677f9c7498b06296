using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization;

/// <summary>
/// Every linear input's calibration rows, written to scratch files in one pass over the calibration windows and read
/// back one matrix group at a time, so the only second moment H = XᵀX/n held is the one of the matrices being written
/// (all 22 layers' H of a 1.1B model take 3.9 GB in float32; 512 calibration tokens' rows of it 0.5 GB on disk).
/// Matrices that read the same input share one file and one H: q/k/v (q's), gate/up (gate's). The same pass records
/// every input's mean squares (llama.cpp's imatrix). As a dictionary it serves H by site, the way the GGUF writer asks
/// for it, tensor after tensor.
/// </summary>
public sealed class SpilledInputs : IReadOnlyDictionary<LinearSite, Tensor>, IDisposable
{
    /// <summary>Scratch the spilled rows may take: the first tokens up to it are kept for H (the mean squares use all of
    /// them). A 1.1B model's inputs take 1.0 MB per token (8,200 tokens fit), an 8B model's 3.4 MB (2,500); a 13M
    /// one's 51 KB. Measured: capping the demo model's 8,192 calibration tokens at 2,048 for H doubled the KLD of its
    /// error-compensated q4_k_m rows (0.000641 -> 0.001349), so the cap is set by disk, not by a token count.</summary>
    public const long MaxScratchBytes = 8L << 30;

    /// <summary>Bytes of spilled rows per calibration token: each decoder block's q, o, gate and down inputs and the head's.</summary>
    public static long BytesPerToken(LlamaConfig c) =>
        sizeof(float) * ((long)c.NumLayers * (2L * c.HiddenSize + (long)c.NumHeads * c.HeadDim + c.IntermediateSize) + c.HiddenSize);

    /// <summary>Tokens whose rows fit in <see cref="MaxScratchBytes"/>.</summary>
    public static int MaxTokens(LlamaConfig c) => (int)Math.Clamp(MaxScratchBytes / BytesPerToken(c), 1, int.MaxValue);

    readonly Dictionary<LinearSite, (string Path, long Rows, int Columns)> _files;
    LinearSite? _held;
    Tensor? _h, _x;

    /// <summary>Per linear input, the mean square of each column over all the calibration tokens.</summary>
    public IReadOnlyDictionary<LinearSite, float[]> Importance { get; }

    SpilledInputs(Dictionary<LinearSite, (string, long, int)> files, IReadOnlyDictionary<LinearSite, float[]> importance)
    {
        _files = files;
        Importance = importance;
    }

    /// <summary>The site whose input file and H serve <paramref name="site"/>.</summary>
    public static LinearSite Owner(LinearSite site) => site.Projection switch
    {
        Projection.K or Projection.V => site with { Projection = Projection.Q },
        Projection.Up => site with { Projection = Projection.Gate },
        _ => site,
    };

    /// <summary>The other sites that read <paramref name="owner"/>'s input (k/v for q, up for gate): they share its
    /// statistics.</summary>
    public static IEnumerable<LinearSite> Sharing(LinearSite owner) => owner.Projection switch
    {
        Projection.Q => new[] { owner with { Projection = Projection.K }, owner with { Projection = Projection.V } },
        Projection.Gate => new[] { owner with { Projection = Projection.Up } },
        _ => Array.Empty<LinearSite>(),
    };

    /// <summary>Runs <paramref name="model"/> over <paramref name="tokens"/> in windows of <paramref name="context"/>,
    /// appending each owner site's input rows (float32) for the first <paramref name="maxTokens"/> tokens (default: what
    /// <see cref="MaxScratchBytes"/> holds) to a file in
    /// <paramref name="folder"/> and summing every site's squares.</summary>
    public static SpilledInputs Record(LlamaModel model, IReadOnlyList<int> tokens, int context, string folder, int? maxTokens = null,
        CancellationToken cancel = default)
    {
        Directory.CreateDirectory(folder);
        int keep = Math.Min(tokens.Count, maxTokens ?? MaxTokens(model.Config));
        DiskSpace.EnsureRoom(folder, keep * BytesPerToken(model.Config));
        var hooks = new Spiller(folder, keep);
        IForwardHooks? previous = model.Hooks;
        model.Hooks = hooks;
        try { ImportanceRecorder.ForEachWindow(model, tokens, context, tokens.Count, cancel, n => hooks.Seen += n); }
        finally
        {
            model.Hooks = previous;
            hooks.Close();
        }
        var importance = hooks.Sums.ToDictionary(kv => kv.Key, kv => kv.Value.Sum.Select(s => (float)(s / Math.Max(1, kv.Value.Count))).ToArray());
        foreach (var site in importance.Keys.ToList())
            foreach (var other in Sharing(site))
                importance.TryAdd(other, importance[site]);
        return new SpilledInputs(hooks.Files.ToDictionary(kv => kv.Key, kv => (kv.Value.Path, kv.Value.Rows, kv.Value.Columns)), importance);
    }

    /// <summary>H = XᵀX/n of the input <paramref name="site"/> reads (float32, host); the previous group's is released.</summary>
    public bool TryGetValue(LinearSite site, [MaybeNullWhen(false)] out Tensor value)
    {
        value = Hold(site) ? _h : null;
        return value is not null;
    }

    /// <summary>X/√n [tokens, columns] of the input <paramref name="site"/> reads, when there are fewer tokens than
    /// columns (then ‖Δw Xᵀ‖²/n, the layer-output error of a row change Δw, costs tokens × columns instead of columns²);
    /// otherwise null.</summary>
    public Tensor? Rows(LinearSite site) => Hold(site) && _x!.shape[0] < _x.shape[1] ? _x : null;

    /// <summary>How many calibration tokens the input <paramref name="site"/> reads was recorded on (0: none).</summary>
    public long Tokens(LinearSite site) => _files.TryGetValue(Owner(site), out var file) ? file.Rows : 0;

    bool Hold(LinearSite site)
    {
        var owner = Owner(site);
        if (_held == owner) return true;
        if (!_files.TryGetValue(owner, out var file) || file.Rows == 0) return false;
        Release();
        using var scope = torch.NewDisposeScope();
        var rows = new float[file.Rows * file.Columns];
        using (var fs = new FileStream(file.Path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20))
            fs.ReadExactly(MemoryMarshal.AsBytes(rows.AsSpan()));
        Tensor x = torch.tensor(rows, new long[] { file.Rows, file.Columns }).div_(Math.Sqrt(file.Rows)); // host
        _h = x.t().matmul(x).DetachFromDisposeScope();
        _x = x.DetachFromDisposeScope();
        _held = owner;
        return true;
    }

    void Release()
    {
        _h?.Dispose();
        _x?.Dispose();
        _h = _x = null;
        _held = null;
    }

    public Tensor this[LinearSite key] => TryGetValue(key, out var h) ? h : throw new KeyNotFoundException(key.ToString());
    public bool ContainsKey(LinearSite key) => _files.ContainsKey(Owner(key)) && Importance.ContainsKey(key);
    public IEnumerable<LinearSite> Keys => Importance.Keys.Where(ContainsKey);
    /// <summary>Enumerating values reads every group's H in turn; each is released when the next is read.</summary>
    public IEnumerable<Tensor> Values => Keys.Select(k => this[k]);
    public int Count => Keys.Count();
    public IEnumerator<KeyValuePair<LinearSite, Tensor>> GetEnumerator() => Keys.Select(k => new KeyValuePair<LinearSite, Tensor>(k, this[k])).GetEnumerator();
    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

    public void Dispose()
    {
        Release();
        foreach (var f in _files.Values)
            try { File.Delete(f.Path); } catch (IOException) { }
    }

    /// <summary>The recording hooks: each owner site's rows appended to its file, every site's squares summed.</summary>
    sealed class Spiller(string folder, int maxTokens) : IForwardHooks
    {
        public sealed class Spill
        {
            public required string Path { get; init; }
            public required FileStream Stream { get; init; }
            public required int Columns { get; init; }
            public long Rows { get; set; }
        }

        public Dictionary<LinearSite, Spill> Files { get; } = new();
        public Dictionary<LinearSite, (double[] Sum, long Count)> Sums { get; } = new();
        public long Seen { get; set; }

        public Tensor OnLinearInput(LinearSite site, Tensor input)
        {
            if (Owner(site) != site) return input;
            using var scope = torch.NewDisposeScope();
            int columns = (int)input.shape[^1];
            Tensor x = input.reshape(-1, columns).to_type(ScalarType.Float32).cpu().contiguous();
            // host: x was moved to the CPU above; sum(new long[] { 0 }), not sum(0): TorchSharp binds that 0 to a dtype
            double[] squares = x.to_type(ScalarType.Float64).pow(2).sum(new long[] { 0 }).data<double>().ToArray();
            if (Sums.TryGetValue(site, out var acc))
            {
                for (int j = 0; j < columns; j++) acc.Sum[j] += squares[j];
                Sums[site] = (acc.Sum, acc.Count + x.shape[0]);
            }
            else Sums[site] = (squares, x.shape[0]);
            long keep = Math.Min(x.shape[0], Math.Max(0, maxTokens - Seen));
            if (keep == 0) return input;
            if (!Files.TryGetValue(site, out var spill))
            {
                string layer = site.Layer < 0 ? "head" : site.Layer.ToString(System.Globalization.CultureInfo.InvariantCulture);
                string path = System.IO.Path.Combine(folder, $"inputs-{layer}-{site.Projection}.f32");
                Files[site] = spill = new Spill
                {
                    Path = path, Columns = columns,
                    Stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20),
                };
            }
            spill.Stream.Write(x.bytes[..checked((int)(keep * columns * sizeof(float)))]); // host
            spill.Rows += keep;
            return input;
        }

        public void Close()
        {
            foreach (var f in Files.Values) f.Stream.Dispose();
        }
    }
}
