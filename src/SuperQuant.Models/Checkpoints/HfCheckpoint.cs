using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Checkpoints;

/// <summary>
/// A Hugging Face checkpoint folder: config.json plus one model.safetensors or shards listed in
/// model.safetensors.index.json. Tensors are read one at a time from disk into fp32 torch tensors, so at most one
/// full copy of the weights (plus one tensor in its stored dtype) is in memory.
/// </summary>
public sealed class HfCheckpoint : IDisposable
{
    readonly Dictionary<string, SafetensorsFile> _byTensor = new(StringComparer.Ordinal);
    readonly List<SafetensorsFile> _shards = new();

    public string Folder { get; }
    public LlamaConfig Config { get; }
    public IReadOnlyList<string> ShardPaths => _shards.Select(s => s.Path).ToList();
    public IEnumerable<string> TensorNames => _byTensor.Keys;

    HfCheckpoint(string folder, LlamaConfig config) { Folder = folder; Config = config; }

    public static bool IsCheckpointFolder(string path) => Directory.Exists(path) && File.Exists(System.IO.Path.Combine(path, "config.json"));

    public static HfCheckpoint Open(string folder)
    {
        if (!Directory.Exists(folder)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"checkpoint folder not found: {folder}", folder);
        SuperQuant.Manifest.InputFiles.Register(folder, "the checkpoint folder");
        var ckpt = new HfCheckpoint(folder, HfConfigReader.Read(System.IO.Path.Combine(folder, "config.json")));
        try
        {
            var (shards, index) = ReadShards(folder);
            foreach (string shard in shards)
            {
                var file = SafetensorsFile.Open(shard);
                ckpt._shards.Add(file);
                foreach (string name in file.Tensors.Keys)
                {
                    if (!ckpt._byTensor.TryAdd(name, file))
                        throw new SuperQuantException(ErrorCodes.CheckpointFormat,
                            $"tensor '{name}' appears in both {ckpt._byTensor[name].Path} and {shard}", shard);
                }
            }
            if (index is not null) CheckIndex(folder, index, ckpt._byTensor);
            return ckpt;
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    /// <summary>The index must say where each tensor is, exactly: an entry naming a tensor its shard does not hold
    /// (or a tensor no entry names) is a damaged or foreign index, refused rather than half-believed.</summary>
    static void CheckIndex(string folder, Dictionary<string, string> index, Dictionary<string, SafetensorsFile> byTensor)
    {
        string indexPath = System.IO.Path.Combine(folder, "model.safetensors.index.json");
        foreach (var (tensor, shard) in index)
            if (!byTensor.TryGetValue(tensor, out var file) || System.IO.Path.GetFileName(file.Path) != shard)
                throw new SuperQuantException(ErrorCodes.CheckpointFormat,
                    $"{indexPath}: weight_map puts tensor '{SuperQuant.Manifest.ManifestReader.Excerpt(tensor)}' in {shard}, which does not hold it " +
                        $"({index.Count} entries for {byTensor.Count} tensors in the shards)", indexPath);
        foreach (var (tensor, file) in byTensor)
            if (!index.ContainsKey(tensor))
                throw new SuperQuantException(ErrorCodes.CheckpointFormat,
                    $"{indexPath}: weight_map does not list tensor '{tensor}' of {System.IO.Path.GetFileName(file.Path)}", indexPath);
    }

    /// <summary>The shard files in order: from model.safetensors.index.json when present, else every *.safetensors.</summary>
    public static IReadOnlyList<string> ShardFiles(string folder) => ReadShards(folder).Shards;

    static (IReadOnlyList<string> Shards, Dictionary<string, string>? Index) ReadShards(string folder)
    {
        string index = System.IO.Path.Combine(folder, "model.safetensors.index.json");
        if (File.Exists(index))
        {
            using var doc = JsonInput.Parse(index, ErrorCodes.CheckpointFormat);
            {
                if (!doc.RootElement.TryGetProperty("weight_map", out JsonElement map) || map.ValueKind != JsonValueKind.Object)
                    throw new SuperQuantException(ErrorCodes.CheckpointFormat, $"{index}: missing object 'weight_map'", index);
                var files = new SortedSet<string>(StringComparer.Ordinal);
                var entries = new Dictionary<string, string>(StringComparer.Ordinal);
                foreach (JsonProperty p in map.EnumerateObject())
                {
                    string? f = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString() : null;
                    // A shard name is a plain file name in this folder; anything else could point outside it.
                    if (string.IsNullOrEmpty(f) || f != System.IO.Path.GetFileName(f))
                        throw new SuperQuantException(ErrorCodes.CheckpointFormat,
                            $"{index}: weight_map entry for '{p.Name}' is not a file name in the folder", index);
                    files.Add(f);
                    if (!entries.TryAdd(p.Name, f))
                        throw new SuperQuantException(ErrorCodes.CheckpointFormat,
                            $"{index}: weight_map lists tensor '{SuperQuant.Manifest.ManifestReader.Excerpt(p.Name)}' twice", index);
                }
                return (files.Select(f => System.IO.Path.Combine(folder, f)).ToList(), entries);
            }

        }
        var all = Directory.GetFiles(folder, "*.safetensors").OrderBy(f => f, StringComparer.Ordinal).ToList();
        if (all.Count == 0) throw new SuperQuantException(ErrorCodes.FileNotFound, $"no *.safetensors files in {folder}", folder);
        return (all, null);
    }

    public bool Contains(string name) => _byTensor.ContainsKey(name);

    public Tensor Read(string name, ScalarType? convertTo = ScalarType.Float32)
    {
        if (!_byTensor.TryGetValue(name, out var file))
            throw new SuperQuantException(ErrorCodes.CheckpointMissingTensor, $"tensor '{name}' is missing from the checkpoint in {Folder}", Folder);
        return file.Read(name, convertTo);
    }

    Tensor ReadShaped(string name, params long[] shape)
    {
        Tensor t = Read(name);
        if (!t.shape.SequenceEqual(shape))
        {
            string got = string.Join(", ", t.shape);
            t.Dispose();
            throw new SuperQuantException(ErrorCodes.CheckpointFormat,
                $"tensor '{name}' has shape [{got}] but config.json implies [{string.Join(", ", shape)}]", _byTensor[name].Path);
        }
        return t;
    }

    /// <summary>Loads all weights as fp32 onto <paramref name="device"/> (CPU when null).</summary>
    public LlamaModel LoadModel(Device? device = null, Action<int, int>? progress = null) => LoadModel(device, progress, streamed: false);

    /// <summary>Loads the model; <paramref name="streamed"/> keeps only the embedding, head and final norm and reads
    /// each decoder block from disk when a pass reaches it (<see cref="LlamaWeights.Source"/>). A streamed model
    /// owns this checkpoint (disposing the model closes it).</summary>
    public LlamaModel LoadModel(Device? device, Action<int, int>? progress, bool streamed)
    {
        LlamaConfig c = Config;
        long d = c.HiddenSize;
        var layers = new LlamaLayerWeights?[c.NumLayers];
        var loaded = new List<IDisposable>();
        Tensor Dev(Tensor t)
        {
            if (device is null || device.type == DeviceType.CPU) { loaded.Add(t); return t; }
            Tensor moved = t.to(device); t.Dispose(); loaded.Add(moved); return moved;
        }
        try
        {
            Tensor embed = Dev(ReadShaped("model.embed_tokens.weight", c.VocabSize, d));
            if (!streamed)
                for (int l = 0; l < c.NumLayers; l++)
                {
                    var layer = LoadLayer(l, device);
                    layers[l] = layer;
                    loaded.Add(layer);
                    progress?.Invoke(l + 1, c.NumLayers);
                }
            Tensor? finalNorm = c.Norm == NormKind.RmsNorm ? Dev(ReadShaped("model.norm.weight", d)) : null;
            // A checkpoint without lm_head.weight ties the head to the embedding whatever the config says.
            Tensor? head = !c.TieWordEmbeddings && Contains("lm_head.weight") ? Dev(ReadShaped("lm_head.weight", c.VocabSize, d)) : null;
            if (streamed)
                for (int l = 0; l < c.NumLayers; l++) CheckLayerShapes(l); // a wrong shape fails now, not an hour into a pass
            var weights = new LlamaWeights
            {
                TokenEmbedding = embed, FinalNorm = finalNorm, LmHead = head, Layers = layers, Source = streamed
                ? new Layers(this, device) : null
            };
            NonFiniteCheck.ThrowIfAny(weights, Folder);
            return new LlamaModel(c with { TieWordEmbeddings = head is null }, weights);
        }
        catch
        {
            foreach (var t in loaded) t.Dispose();
            throw;
        }
    }

    /// <summary>The streamed model's source: block l read from the shards (positioned reads, no memory map, so the
    /// pages read count in the page cache, not in the process), checked for NaN/Inf.</summary>
    sealed class Layers(HfCheckpoint checkpoint, Device? device) : ILayerSource
    {
        public LlamaLayerWeights Load(int layer)
        {
            checkpoint.CheckUnchanged();
            var w = checkpoint.LoadLayer(layer, device);
            try { NonFiniteCheck.ThrowIfAny(w, layer, checkpoint.Folder); }
            catch { w.Dispose(); throw; }
            return w;
        }

        public void Dispose() => checkpoint.Dispose();
    }

    /// <summary>Every tensor of block <paramref name="l"/> with the shape config.json implies: what
    /// <see cref="LoadLayer"/> reads and a streamed load checks up front.</summary>
    (string Name, long[] Shape)[] LayerTensors(int l)
    {
        LlamaConfig c = Config;
        long d = c.HiddenSize, qd = (long)c.NumHeads * c.HeadDim, kv = c.KvDim;
        long[] Shape(Projection p) { var (rows, cols) = c.MatrixShape(p); return new[] { rows, cols }; }
        string p = $"model.layers.{l}.";
        var list = new List<(string, long[])>();
        if (c.Architecture == "phi3")
        {
            list.Add((p + "self_attn.qkv_proj.weight", new[] { qd + 2 * kv, d }));
            list.Add((p + "mlp.gate_up_proj.weight", new[] { 2 * (long)c.IntermediateSize, d }));
        }
        else
            foreach (var (name, proj) in new[] { ("self_attn.q_proj.weight", Projection.Q), ("self_attn.k_proj.weight", Projection.K),
                ("self_attn.v_proj.weight", Projection.V),
                         ("mlp.gate_proj.weight", Projection.Gate), ("mlp.up_proj.weight", Projection.Up) })
                list.Add((p + name, Shape(proj)));
        list.Add((p + "self_attn.o_proj.weight", Shape(Projection.O)));
        list.Add((p + "mlp.down_proj.weight", Shape(Projection.Down)));
        foreach (var (name, _) in NormNames(c)) list.Add((p + name, new[] { d }));
        if (c.QkNorm != QkNormKind.None)
        {
            bool perHead = c.QkNorm == QkNormKind.PerHead;
            list.Add((p + "self_attn.q_norm.weight", new[] { perHead ? c.HeadDim : qd }));
            list.Add((p + "self_attn.k_norm.weight", new[] { perHead ? c.HeadDim : kv }));
        }
        if (c.QkvBias)
        {
            list.Add((p + "self_attn.q_proj.bias", new[] { qd })); list.Add((p + "self_attn.k_proj.bias", new[] { kv })); list.Add((p
            + "self_attn.v_proj.bias", new[] { kv }));
        }
        return list.ToArray();
    }

    enum NormRole { AttnNorm, AttnPostNorm, FfnNorm, FfnPostNorm }

    /// <summary>Each family's names for a block's norms: "post_attention_layernorm" is the MLP's input norm in Llama
    /// but the attention output's norm in Gemma and OLMo 2.</summary>
    static (string Name, NormRole Role)[] NormNames(LlamaConfig c)
    {
        if (c.Norm != NormKind.RmsNorm) return Array.Empty<(string, NormRole)>();
        var names = new List<(string, NormRole)>();
        if (c.PreNorms) names.Add(("input_layernorm.weight", NormRole.AttnNorm));
        if (c.PostNorms) names.Add(("post_attention_layernorm.weight", NormRole.AttnPostNorm));
        if (c.PreNorms) names.Add((c.PostNorms ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight", NormRole.FfnNorm));
        if (c.PostNorms) names.Add(("post_feedforward_layernorm.weight", NormRole.FfnPostNorm));
        return names.ToArray();
    }

    void CheckLayerShapes(int l)
    {
        foreach (var (name, shape) in LayerTensors(l))
        {
            if (!_byTensor.TryGetValue(name, out var file))
                throw new SuperQuantException(ErrorCodes.CheckpointMissingTensor, $"tensor '{name}' is missing from the checkpoint in {Folder}", Folder);
            var e = file.Entry(name);
            if (!e.Shape.SequenceEqual(shape))
                throw new SuperQuantException(ErrorCodes.CheckpointFormat,
                    $"tensor '{name}' has shape [{string.Join(", ", e.Shape)}] but config.json implies [{string.Join(", ", shape)}]", file.Path);
        }
    }

    /// <summary>Decoder block <paramref name="l"/> as fp32 tensors on <paramref name="device"/> (CPU when null).</summary>
    public LlamaLayerWeights LoadLayer(int l, Device? device = null)
    {
        LlamaConfig c = Config;
        long qd = (long)c.NumHeads * c.HeadDim, kv = c.KvDim, h = c.IntermediateSize;
        var shapes = LayerTensors(l).ToDictionary(t => t.Name, t => t.Shape);
        var loaded = new List<IDisposable>();
        string p = $"model.layers.{l}.";
        Tensor Dev(string name)
        {
            Tensor t = ReadShaped(p + name, shapes[p + name]);
            if (device is null || device.type == DeviceType.CPU) { loaded.Add(t); return t; }
            Tensor moved = t.to(device); t.Dispose(); loaded.Add(moved); return moved;
        }
        Tensor? Optional(string name) => shapes.ContainsKey(p + name) ? Dev(name) : null;
        try
        {
            Tensor wq, wk, wv, wgate, wup;
            if (c.Architecture == "phi3")
            {
                // Phi-3 fuses q/k/v and gate/up; split into views (no copies).
                Tensor qkv = Dev("self_attn.qkv_proj.weight");
                wq = qkv.narrow(0, 0, qd); wk = qkv.narrow(0, qd, kv); wv = qkv.narrow(0, qd + kv, kv);
                Tensor gateUp = Dev("mlp.gate_up_proj.weight");
                wgate = gateUp.narrow(0, 0, h); wup = gateUp.narrow(0, h, h);
            }
            else
            {
                wq = Dev("self_attn.q_proj.weight"); wk = Dev("self_attn.k_proj.weight"); wv = Dev("self_attn.v_proj.weight");
                wgate = Dev("mlp.gate_proj.weight"); wup = Dev("mlp.up_proj.weight");
            }
            var norms = NormNames(c).ToDictionary(n => n.Role, n => Dev(n.Name));
            return new LlamaLayerWeights
            {
                AttnNorm = norms.GetValueOrDefault(NormRole.AttnNorm),
                Wq = wq, Wk = wk, Wv = wv,
                Bq = Optional("self_attn.q_proj.bias"), Bk = Optional("self_attn.k_proj.bias"), Bv = Optional("self_attn.v_proj.bias"),
                QNorm = Optional("self_attn.q_norm.weight"), KNorm = Optional("self_attn.k_norm.weight"),
                Wo = Dev("self_attn.o_proj.weight"),
                AttnPostNorm = norms.GetValueOrDefault(NormRole.AttnPostNorm),
                FfnNorm = norms.GetValueOrDefault(NormRole.FfnNorm),
                WGate = wgate, WUp = wup,
                WDown = Dev("mlp.down_proj.weight"),
                FfnPostNorm = norms.GetValueOrDefault(NormRole.FfnPostNorm),
            };
        }
        catch
        {
            foreach (var t in loaded) t.Dispose();
            throw;
        }
    }

    /// <summary>Throws SQ2001 when a shard was written since it was opened (<see cref="SafetensorsFile.CheckUnchanged"/>).</summary>
    public void CheckUnchanged()
    {
        foreach (var s in _shards) s.CheckUnchanged();
    }

    public void Dispose()
    {
        foreach (var s in _shards) s.Dispose();
    }
}
