using System.Text.Json;
using System.Text.Json.Serialization;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using SuperQuant.Models.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Artifacts;

/// <summary>Provenance and settings stored in a packed artifact's metadata.</summary>
public sealed record PackedInfo
{
    public required string Method { get; init; }
    public required int Bits { get; init; }
    public required int BlockSize { get; init; }
    /// <summary>null when no clipping was applied.</summary>
    public double? Z { get; init; }
    public required List<int[]> SuperWeights { get; init; }
    public required string SourceSha256 { get; init; }
    public string? ManifestSha256 { get; init; }
    public required string ToolVersion { get; init; }
    public required double BitsPerWeight { get; init; }
    /// <summary>"paper" when the weights use the Super Weight paper's quantizer (format version 3); null = ours.</summary>
    public string? Variant { get; init; }
    /// <summary>The clip method (reference names: no, zscore, block_percentage, tensor_percentage, iqr) and levels (int,
    /// int-shifted, normal-float) when they are not the defaults.</summary>
    public string? Clip { get; init; }
    public string? Levels { get; init; }
    /// <summary>Activation quantization the artifact must be run with (format version 2); null = weight-only.</summary>
    public ActivationInfo? Activations { get; init; }
}

/// <summary>How a W/A artifact quantizes activations at run time; the online transforms are tensors in the file.</summary>
public sealed record ActivationInfo
{
    /// <summary>rtn | super-aware | smoothquant | hadamard | duquant</summary>
    public required string Method { get; init; }
    public required int Bits { get; init; }
    public bool PerTensor { get; init; }
    /// <summary>Asymmetric (zero point) activation quantization; false (absent in older files) = symmetric.</summary>
    public bool Asymmetric { get; init; }
    /// <summary>Super activations kept as one fp16 scalar at their token (the paper) instead of whole fp32 channels.</summary>
    public bool SuperActivationScalar { get; init; }
    public double Clip { get; init; } = 1.0;
    /// <summary>[layer, group, channel] triples kept out of activation quantization (group: 0 attention, 1 o_proj,
    /// 2 gate/up, 3 down_proj).</summary>
    public List<int[]> SuperChannels { get; init; } = new();

    public static string NameOf(QuantMethod m) => m switch
    {
        QuantMethod.SuperAware => "super-aware",
        _ => m.ToString().ToLowerInvariant(),
    };

    public static QuantMethod Parse(string name) => name switch
    {
        "rtn" => QuantMethod.Rtn,
        "super-aware" => QuantMethod.SuperAware,
        "smoothquant" => QuantMethod.SmoothQuant,
        "hadamard" => QuantMethod.Hadamard,
        "duquant" => QuantMethod.DuQuant,
        _ => throw new InvalidDataException($"unknown activation method '{name}'"),
    };
}

/// <summary>
/// The packed artifact ("superquant.packed", version 1): one safetensors file. For each quantized linear layer with
/// Hugging Face name N: <c>N.qcodes</c> (U8, bit-packed codes, <see cref="BitPacking"/>), <c>N.scales</c> and
/// <c>N.zeros</c> (F16 [rows, blocks]), and when it has super weights <c>N.outlier_idx</c> (I32 [k, 2]) and
/// <c>N.outlier_val</c> (F16 [k]). Embedding and output head are F16, norms and biases F32. Metadata holds the
/// format name and version, the model config, each matrix's shape/bits/block, and <see cref="PackedInfo"/>.
/// Version 2 (W/A artifacts: SmoothQuant, Hadamard, DuQuant, or any activation bits below 16) adds
/// <see cref="PackedInfo.Activations"/> and, for rotations, <c>model.layers.L.act_transform.G</c> (F32 [n, n], G one of
/// attention, output, mlp, down): the loader installs them as forward hooks (x -> quantize(x T)), so a version-1
/// loader must refuse such a file rather than run it without its transforms.
/// </summary>
public static class PackedArtifact
{
    public const string FormatName = "superquant.packed";
    public const int FormatVersion = 1, ActivationFormatVersion = 2, PaperLayoutFormatVersion = 3;

    static string GroupName(ActivationQuantizer.InputGroup g) => g.ToString().ToLowerInvariant();

    /// <summary>Layout "row" (the default, absent in version 1/2 files) or one of the paper layouts, whose blocks of
    /// <c>FlatBlock</c> elements cut the flattened matrix.</summary>
    sealed record MatrixInfo(long Rows, long Cols, int Bits, int Block, string? Layout = null, long FlatBlock = 0);

    static readonly (MatrixLayout Layout, string Name)[] LayoutNames =
        { (MatrixLayout.Row, "row"), (MatrixLayout.Paper, "paper"), (MatrixLayout.PaperShifted, "paper-shifted"), (MatrixLayout.PaperNormalFloat, "paper-nf") };

    static readonly JsonSerializerOptions Json = new() { NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static void Write(string path, LlamaModel model, QuantizationResult result, string sourceSha256, string? manifestSha256 = null,
        ActivationQuantizer? activations = null)
    {
        var weights = model.Weights;
        Write(path, model.Config, weights, result.Options, result.Z, result.SuperWeights, site => result.Matrices[site].Plan,
            l => (weights.Layers[l] ?? throw new InvalidOperationException("a layer-streamed model is written with WriteByLayer"),
                result.Matrices.Where(kv => kv.Key.Layer == l).ToDictionary(kv => kv.Key, kv => kv.Value), false),
            sourceSha256, manifestSha256, activations);
    }

    /// <summary>Writes an artifact one decoder block at a time (a layer-streamed model): the header is laid out from
    /// <paramref name="plan"/> before any block exists, then each block's floats and quantized matrices are asked of
    /// <paramref name="quantizedLayer"/> when the writer reaches it, written and disposed. Memory: one block. The
    /// caller quantizes (the pipeline's packed stage); this only lays out and writes.</summary>
    public static void WriteByLayer(string path, LlamaModel model, WeightQuantizationOptions options, double z, IReadOnlyList<SuperWeight> superWeights,
        Func<LinearSite, MatrixPlan> plan, Func<int, (LlamaLayerWeights Floats, Dictionary<LinearSite, QuantizedMatrix> Matrices)> quantizedLayer,
        string sourceSha256, string? manifestSha256 = null) =>
        Write(path, model.Config, model.Weights, options, z, superWeights, plan, l =>
        {
            var (floats, matrices) = quantizedLayer(l);
            return (floats, matrices, true);
        }, sourceSha256, manifestSha256, null);

    static readonly Projection[] BlockProjections = { Projection.Q, Projection.K, Projection.V, Projection.O, Projection.Gate, Projection.Up, Projection.Down };

    /// <summary>The one writer: tensors in block order (embedding, then per block its norms, biases, quantized matrices
    /// and transforms, then the final norm and head), each block's data asked of <paramref name="layerData"/> once,
    /// when the writer reaches it, and released (when owned) when it moves on.</summary>
    static void Write(string path, LlamaConfig c, LlamaWeights w, WeightQuantizationOptions options, double z, IReadOnlyList<SuperWeight> superWeights,
        Func<LinearSite, MatrixPlan> plan, Func<int, (LlamaLayerWeights Floats, Dictionary<LinearSite, QuantizedMatrix> Matrices, bool Owned)> layerData,
        string sourceSha256, string? manifestSha256, ActivationQuantizer? activations)
    {
        var layout = new List<TensorLayout>();
        var producers = new Dictionary<string, Func<Tensor>>();
        void Add(string name, ScalarType type, long[] shape, Func<Tensor> produce) { layout.Add(new(name, type, shape)); producers[name] = produce; }
        // One handle per produced tensor (the writer disposes it): to_type and contiguous may each return a new handle,
        // and a lost one keeps the converted copy (a 131 MB fp16 embedding) alive until a GC finalizes it.
        static Tensor Converted(Tensor t, ScalarType type)
        {
            using var scope = torch.NewDisposeScope();
            return t.to_type(type).contiguous().alias().MoveToOuterDisposeScope();
        }
        void AddFloat(string name, Tensor? t, ScalarType type) { if (t is not null) Add(name, type, t.shape, () => Converted(t, type)); }

        int current = -1;
        (LlamaLayerWeights Floats, Dictionary<LinearSite, QuantizedMatrix> Matrices, bool Owned) held = default;
        void Release()
        {
            if (current >= 0 && held.Owned) { held.Floats!.Dispose(); foreach (var q in held.Matrices!.Values) q.Dispose(); }
            current = -1; held = default;
        }
        (LlamaLayerWeights Floats, Dictionary<LinearSite, QuantizedMatrix> Matrices, bool Owned) Block(int l)
        {
            if (current != l) { Release(); held = layerData(l); current = l; }
            return held;
        }
        void AddLayerFloat(string name, int l, long[] shape, Func<LlamaLayerWeights, Tensor?> pick, ScalarType type) =>
            Add(name, type, shape, () => Converted(pick(Block(l).Floats)!, type));

        var matrices = new Dictionary<string, MatrixInfo>();
        double bits = 0, weights = 0;
        bool paper = false;
        long d = c.HiddenSize, qd = (long)c.NumHeads * c.HeadDim, kv = c.KvDim;
        bool rms = c.Norm == NormKind.RmsNorm;
        AddFloat("model.embed_tokens.weight", w.TokenEmbedding, ScalarType.Float16);
        for (int l = 0; l < c.NumLayers; l++)
        {
            int layer = l;
            string p = $"model.layers.{l}.";
            if (rms && c.PreNorms)
            {
                AddLayerFloat(p + "input_layernorm.weight", l, new[] { d }, x => x.AttnNorm, ScalarType.Float32);
                AddLayerFloat(p + "post_attention_layernorm.weight", l, new[] { d }, x => x.FfnNorm, ScalarType.Float32);
            }
            // Our own names for the extra vectors of some families (not Hugging Face's, whose meaning differs by family).
            if (rms && c.PostNorms)
            {
                AddLayerFloat(p + "attn_post_norm.weight", l, new[] { d }, x => x.AttnPostNorm, ScalarType.Float32);
                AddLayerFloat(p + "ffn_post_norm.weight", l, new[] { d }, x => x.FfnPostNorm, ScalarType.Float32);
            }
            if (c.QkNorm != QkNormKind.None)
            {
                bool perHead = c.QkNorm == QkNormKind.PerHead;
                AddLayerFloat(p + "self_attn.q_norm.weight", l, new[] { perHead ? c.HeadDim : qd }, x => x.QNorm, ScalarType.Float32);
                AddLayerFloat(p + "self_attn.k_norm.weight", l, new[] { perHead ? c.HeadDim : kv }, x => x.KNorm, ScalarType.Float32);
            }
            if (c.QkvBias)
            {
                AddLayerFloat(p + "self_attn.q_proj.bias", l, new[] { qd }, x => x.Bq, ScalarType.Float32);
                AddLayerFloat(p + "self_attn.k_proj.bias", l, new[] { kv }, x => x.Bk, ScalarType.Float32);
                AddLayerFloat(p + "self_attn.v_proj.bias", l, new[] { kv }, x => x.Bv, ScalarType.Float32);
            }
            foreach (var proj in BlockProjections)
            {
                var site = new LinearSite(l, proj);
                MatrixPlan m = plan(site);
                string n = site.WeightName;
                bits += m.BitsPerWeight * m.Rows * m.Cols; weights += (double)m.Rows * m.Cols;
                QuantizedMatrix Q() => Block(layer).Matrices[site];
                Add(n + ".qcodes", ScalarType.Byte, new[] { BitPacking.PackedBytes(m.Rows * m.Cols, m.Bits) }, () => Q().PackedCodes.alias());
                if (m.IsPaperLayout)
                {
                    paper = true;
                    matrices[n] = new MatrixInfo(m.Rows, m.Cols, m.Bits, m.BlockSize, LayoutNames.First(x => x.Layout == m.Layout).Name, m.FlatBlock);
                    Add(n + ".block_min", ScalarType.Float32, m.StatShape, () => Q().Scales.alias());
                    Add(n + ".block_max", ScalarType.Float32, m.StatShape, () => Q().Zeros.alias());
                }
                else
                {
                    matrices[n] = new MatrixInfo(m.Rows, m.Cols, m.Bits, m.BlockSize);
                    Add(n + ".scales", ScalarType.Float16, m.StatShape, () => Q().Scales.alias());
                    Add(n + ".zeros", ScalarType.Float16, m.StatShape, () => Q().Zeros.alias());
                }
                if (m.Outliers > 0)
                {
                    Add(n + ".outlier_idx", ScalarType.Int32, new long[] { m.Outliers, 2 }, () => Q().OutlierIndices!.to_type(ScalarType.Int32));
                    Add(n + ".outlier_val", ScalarType.Float16, new long[] { m.Outliers }, () => Q().OutlierValues!.alias());
                }
            }
            if (activations is not null)
                foreach (var ((tl, group), t) in activations.Transforms.Where(kv => kv.Key.Layer == l).OrderBy(kv => kv.Key.Group))
                    AddFloat($"model.layers.{tl}.act_transform.{GroupName(group)}", t, ScalarType.Float32);
        }
        // The last block's data is released before the final norm and head are written.
        Add("model.norm.weight", ScalarType.Float32, new[] { d }, () => { Release(); return Converted(w.FinalNorm!, ScalarType.Float32); });
        if (!rms) { layout.RemoveAt(layout.Count - 1); producers.Remove("model.norm.weight"); }
        AddFloat("lm_head.weight", w.LmHead, ScalarType.Float16);
        ActivationInfo? act = null;
        if (activations is not null)
        {
            act = new ActivationInfo
            {
                Method = ActivationInfo.NameOf(activations.Options.Method), Bits = activations.Options.ActivationBits,
                PerTensor = activations.Options.PerTensor, Clip = activations.Options.ActivationClip,
                Asymmetric = activations.Options.Asymmetric, SuperActivationScalar = activations.Options.SuperActivationScalar,
                SuperChannels = activations.SuperChannels.SelectMany(kv => kv.Value.Select(ch => new[] { kv.Key.Layer, (int)kv.Key.Group, ch })).ToList(),
            };
        }
        var info = new PackedInfo
        {
            Method = act is not null && act.Method is "smoothquant" or "hadamard" or "duquant" ? act.Method
                : options.Method == QuantMethod.SuperAware ? "super-aware" : "rtn",
            Activations = act,
            Bits = options.Bits, BlockSize = options.BlockSize,
            Z = double.IsPositiveInfinity(z) ? null : z,
            Variant = options.Variant == WeightVariant.Paper ? options.Variant.Name() : null,
            Clip = options.Clip == ClipMethod.ZScore ? null : options.Clip.Name(),
            Levels = options.Levels == LevelKind.Integer ? null : options.Levels.Name(),
            SuperWeights = superWeights.Select(s => new[] { s.Layer, s.Row, s.Column }).ToList(),
            SourceSha256 = sourceSha256, ManifestSha256 = manifestSha256,
            ToolVersion = typeof(PackedArtifact).Assembly.GetName().Version?.ToString() ?? "0",
            BitsPerWeight = bits / weights,
        };
        var metadata = new Dictionary<string, string>
        {
            ["format"] = FormatName,
            ["format_version"] = (paper ? PaperLayoutFormatVersion : act is null ? FormatVersion : ActivationFormatVersion).ToString(),
            ["config"] = JsonSerializer.Serialize(c, Json),
            ["matrices"] = JsonSerializer.Serialize(matrices, Json),
            ["superquant"] = JsonSerializer.Serialize(info, Json),
        };
        try
        {
            // Block tensors are views of the held block's data (alias) or conversions: dispose each after writing;
            // the held block itself is released when the writer moves on.
            SafetensorsWriter.WriteStreaming(path, layout, name => producers[name](), disposeEach: true, metadata);
        }
        catch (IOException e)
        {
            throw new SuperQuantException(ErrorCodes.ArtifactWrite, $"could not write {path}: {e.Message}", path, e);
        }
        finally { Release(); }
    }

    public static PackedInfo ReadInfo(string path)
    {
        using var f = SafetensorsFile.Open(path);
        return ReadHeader(f).info;
    }

    static (LlamaConfig config, Dictionary<string, MatrixInfo> matrices, PackedInfo info) ReadHeader(SafetensorsFile f)
    {
        SuperQuantException Bad(string what) => new(ErrorCodes.ArtifactFormat, $"{f.Path} is not a valid {FormatName} artifact: {what}", f.Path);
        if (!f.Metadata.TryGetValue("format", out var format) || format != FormatName) throw Bad("missing format marker");
        if (!f.Metadata.TryGetValue("format_version", out var v)
            || (v != FormatVersion.ToString() && v != ActivationFormatVersion.ToString() && v != PaperLayoutFormatVersion.ToString()))
            throw Bad($"format version {v ?? "(none)"} (this loader reads versions {FormatVersion}..{PaperLayoutFormatVersion})");
        try
        {
            var config = JsonSerializer.Deserialize<LlamaConfig>(f.Metadata["config"], Json) ?? throw Bad("empty config");
            config.Validate();
            var matrices = JsonSerializer.Deserialize<Dictionary<string, MatrixInfo>>(f.Metadata["matrices"], Json) ?? throw Bad("empty matrix table");
            var info = JsonSerializer.Deserialize<PackedInfo>(f.Metadata["superquant"], Json) ?? throw Bad("empty settings");
            return (config, matrices, info);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidDataException or NotSupportedException)
        {
            throw Bad(e.Message);
        }
    }

    /// <summary>Reads one quantized matrix back (codes stay packed, as stored), checking every size against the header.</summary>
    static QuantizedMatrix ReadMatrix(SafetensorsFile f, string name, MatrixInfo m)
    {
        SuperQuantException Bad(string what) => new(ErrorCodes.ArtifactFormat, $"{f.Path}: matrix '{name}': {what}", f.Path);
        if (m.Rows <= 0 || m.Cols <= 0 || m.Rows > int.MaxValue || m.Cols > int.MaxValue) throw Bad($"shape [{m.Rows}, {m.Cols}]");
        var layout = LayoutNames.FirstOrDefault(l => l.Name == (m.Layout ?? "row"));
        if (layout.Name is null) throw Bad($"unknown layout '{m.Layout}'");
        string[] parts;
        long[] statShape;
        if (layout.Layout == MatrixLayout.Row)
        {
            BlockRtnQuantizer.Validate(m.Bits, m.Block == m.Cols ? 0 : m.Block);
            parts = new[] { ".scales", ".zeros" };
            statShape = new[] { m.Rows, (m.Cols + m.Block - 1) / m.Block };
        }
        else
        {
            if (m.Bits < BlockRtnQuantizer.MinBits || m.Bits > BlockRtnQuantizer.MaxBits
                || (layout.Layout == MatrixLayout.PaperNormalFloat && m.Bits is not (3 or 4)))
                throw Bad($"{m.Bits}-bit {layout.Name} layout");
            if (m.FlatBlock <= 0 || (m.Rows * m.Cols) % m.FlatBlock != 0) throw Bad($"block of {m.FlatBlock} elements does not divide the matrix");
            parts = new[] { ".block_min", ".block_max" };
            statShape = new[] { m.Rows * m.Cols / m.FlatBlock };
        }
        if (f.Entry(name + ".qcodes").ElementCount != BitPacking.PackedBytes(m.Rows * m.Cols, m.Bits)) throw Bad("code bytes do not match its shape and bits");
        foreach (string part in parts)
            if (!f.Entry(name + part).Shape.SequenceEqual(statShape)) throw Bad($"{part[1..]} shape is not [{string.Join(", ", statShape)}]");
        Tensor packed = f.Read(name + ".qcodes");
        Tensor? idx = null, val = null;
        if (f.Contains(name + ".outlier_idx"))
        {
            idx = f.Read(name + ".outlier_idx").to_type(ScalarType.Int64);
            val = f.Read(name + ".outlier_val");
            if (idx.shape[0] != val.shape[0] || (idx.numel() > 0 && ((idx[TensorIndex.Colon, 0] >= m.Rows).any().item<bool>()
                || (idx[TensorIndex.Colon, 1] >= m.Cols).any().item<bool>() || (idx < 0).any().item<bool>())))
                throw Bad("outlier coordinates out of range");
        }
        return new QuantizedMatrix
        {
            Bits = m.Bits, BlockSize = m.Block, Rows = m.Rows, Cols = m.Cols, PackedCodes = packed, Layout = layout.Layout, FlatBlock = m.FlatBlock,
            Scales = f.Read(name + parts[0], layout.Layout == MatrixLayout.Row ? null : ScalarType.Float32),
            Zeros = f.Read(name + parts[1], layout.Layout == MatrixLayout.Row ? null : ScalarType.Float32),
            OutlierIndices = idx, OutlierValues = val,
        };
    }

    /// <summary>Loads the artifact into a model with dequantized fp32 weights.</summary>
    public static (LlamaModel Model, PackedInfo Info) Load(string path, Device? device = null) => Load(path, device, streamed: false);

    /// <summary>Loads the artifact; <paramref name="streamed"/> keeps the embedding, head and final norm and reads and
    /// dequantizes each decoder block when a pass reaches it (the file stays open until the model is disposed).</summary>
    public static (LlamaModel Model, PackedInfo Info) Load(string path, Device? device, bool streamed)
    {
        if (device is not null && device.type != DeviceType.CPU)
            throw new SuperQuantException(ErrorCodes.InvalidArgument, "loading packed artifacts onto CUDA is not implemented yet; load on CPU");
        var f = SafetensorsFile.Open(path);
        try
        {
            var (c, matrices, info) = ReadHeader(f);
            Tensor Float(string name) => f.Read(name, ScalarType.Float32);
            Tensor? Optional(string name) => f.Contains(name) ? Float(name) : null;
            var source = new Layers(f, matrices);
            var layers = new LlamaLayerWeights?[c.NumLayers];
            if (!streamed)
                for (int l = 0; l < c.NumLayers; l++) layers[l] = source.Load(l);
            else
                for (int l = 0; l < c.NumLayers; l++) source.CheckLayer(l); // a missing matrix fails now, not in the middle of a pass
            var weights = new LlamaWeights
            {
                TokenEmbedding = Float("model.embed_tokens.weight"), FinalNorm = Optional("model.norm.weight"), LmHead = Optional("lm_head.weight"),
                Layers = layers, Source = streamed ? source : null,
            };
            var model = new LlamaModel(c, weights);
            if (info.Activations is { } act) model.Hooks = ReadActivations(f, c, info, act);
            if (!streamed) f.Dispose();
            return (model, info);
        }
        catch
        {
            f.Dispose();
            throw;
        }
    }

    /// <summary>Decoder blocks read back from the file and dequantized, one at a time.</summary>
    sealed class Layers(SafetensorsFile f, Dictionary<string, MatrixInfo> matrices) : ILayerSource
    {
        static readonly string[] MatrixNames = { "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight" };

        public void CheckLayer(int l)
        {
            foreach (string n in MatrixNames)
                if (!matrices.ContainsKey($"model.layers.{l}.{n}")) throw new SuperQuantException(ErrorCodes.ArtifactFormat,
                    $"{f.Path}: matrix 'model.layers.{l}.{n}' is missing", f.Path);
        }

        public LlamaLayerWeights Load(int l)
        {
            var made = new List<Tensor>();
            Tensor Keep(Tensor t) { made.Add(t); return t; }
            Tensor? Optional(string name) => f.Contains(name) ? Keep(f.Read(name, ScalarType.Float32)) : null;
            Tensor Matrix(string name)
            {
                if (!matrices.TryGetValue(name, out var m)) throw new SuperQuantException(ErrorCodes.ArtifactFormat,
                    $"{f.Path}: matrix '{name}' is missing", f.Path);
                using QuantizedMatrix q = ReadMatrix(f, name, m);
                return Keep(BlockRtnQuantizer.Dequantize(q));
            }
            string p = $"model.layers.{l}.";
            f.CheckUnchanged();
            try
            {
                return new LlamaLayerWeights
                {
                    AttnNorm = Optional(p + "input_layernorm.weight"), FfnNorm = Optional(p + "post_attention_layernorm.weight"),
                    Bq = Optional(p + "self_attn.q_proj.bias"), Bk = Optional(p + "self_attn.k_proj.bias"), Bv = Optional(p + "self_attn.v_proj.bias"),
                    QNorm = Optional(p + "self_attn.q_norm.weight"), KNorm = Optional(p + "self_attn.k_norm.weight"),
                    AttnPostNorm = Optional(p + "attn_post_norm.weight"), FfnPostNorm = Optional(p + "ffn_post_norm.weight"),
                    Wq = Matrix(p + "self_attn.q_proj.weight"), Wk = Matrix(p + "self_attn.k_proj.weight"), Wv = Matrix(p + "self_attn.v_proj.weight"),
                    Wo = Matrix(p + "self_attn.o_proj.weight"), WGate = Matrix(p + "mlp.gate_proj.weight"), WUp = Matrix(p + "mlp.up_proj.weight"),
                    WDown = Matrix(p + "mlp.down_proj.weight"),
                };
            }
            catch
            {
                foreach (var t in made) t.Dispose();
                throw;
            }
        }

        public void Dispose() => f.Dispose();
    }

    /// <summary>Rebuilds the activation hooks of a version-2 artifact, checking every transform's shape and every
    /// channel against the model.</summary>
    static ActivationQuantizer ReadActivations(SafetensorsFile f, LlamaConfig c, PackedInfo info, ActivationInfo act)
    {
        SuperQuantException Bad(string what) => new(ErrorCodes.ArtifactFormat, $"{f.Path}: activations: {what}", f.Path);
        if (act.Bits < 2 || act.Bits > 16) throw Bad($"{act.Bits}-bit activations");
        QuantMethod method;
        try { method = ActivationInfo.Parse(act.Method); } catch (InvalidDataException e) { throw Bad(e.Message); }
        long Width(ActivationQuantizer.InputGroup g) => g switch
        {
            ActivationQuantizer.InputGroup.Output => (long)c.NumHeads * c.HeadDim,
            ActivationQuantizer.InputGroup.Down => c.IntermediateSize,
            _ => c.HiddenSize,
        };
        var transforms = new Dictionary<(int, ActivationQuantizer.InputGroup), Tensor>();
        for (int l = 0; l < c.NumLayers; l++)
            foreach (var g in Enum.GetValues<ActivationQuantizer.InputGroup>())
            {
                string name = $"model.layers.{l}.act_transform.{GroupName(g)}";
                if (!f.Contains(name)) continue;
                if (!f.Entry(name).Shape.SequenceEqual(new[] { Width(g), Width(g) })) throw Bad($"{name} is not [{Width(g)}, {Width(g)}]");
                transforms[(l, g)] = f.Read(name, ScalarType.Float32);
            }
        var channels = new Dictionary<(int, ActivationQuantizer.InputGroup), int[]>();
        foreach (int[] t in act.SuperChannels)
        {
            if (t.Length != 3 || t[0] < 0 || t[0] >= c.NumLayers || t[1] < 0 || t[1] > 3) throw Bad("malformed super channel entry");
            var key = (t[0], (ActivationQuantizer.InputGroup)t[1]);
            if (t[2] < 0 || t[2] >= Width(key.Item2)) throw Bad($"super channel {t[2]} out of range");
            channels[key] = (channels.TryGetValue(key, out var a) ? a : Array.Empty<int>()).Append(t[2]).ToArray();
        }
        var o = new ActivationQuantizationOptions
        {
            Method = method, WeightBits = info.Bits, ActivationBits = act.Bits, PerTensor = act.PerTensor,
            ActivationClip = act.Clip,
            Asymmetric = act.Asymmetric, SuperActivationScalar = act.SuperActivationScalar
        };
        return ActivationQuantizer.FromState(o, transforms, channels);
    }
}
