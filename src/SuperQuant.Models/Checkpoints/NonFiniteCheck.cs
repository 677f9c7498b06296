using System.Numerics;
using System.Runtime.InteropServices;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using TorchSharp;

namespace SuperQuant.Models.Checkpoints;

/// <summary>NaN or Inf weights make every later number meaningless; refuse them at load with the tensor's name.</summary>
public static class NonFiniteCheck
{
    /// <summary>Every tensor of the model; a layer-streamed model's blocks are checked as they are loaded
    /// (<see cref="ThrowIfAny(LlamaLayerWeights, int, string)"/>).</summary>
    public static void ThrowIfAny(LlamaWeights w, string source)
    {
        Check("model.embed_tokens.weight", w.TokenEmbedding, source);
        Check("model.norm.weight", w.FinalNorm, source);
        Check("lm_head.weight", w.LmHead, source);
        for (int l = 0; l < w.Layers.Length; l++)
            if (w.Layers[l] is { } layer) ThrowIfAny(layer, l, source);
    }

    public static void ThrowIfAny(LlamaLayerWeights w, int l, string source)
    {
        string p = $"model.layers.{l}.";
        // Post-norm families (Gemma, OLMo 2) call the attention's output norm "post_attention_layernorm", which is the
        // MLP's input norm elsewhere.
        bool postNorms = w.AttnPostNorm is not null;
        Check(p + "input_layernorm.weight", w.AttnNorm, source);
        Check(p + (postNorms ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight"), w.FfnNorm, source);
        Check(p + "self_attn.q_norm.weight", w.QNorm, source);
        Check(p + "self_attn.k_norm.weight", w.KNorm, source);
        Check(p + "post_attention_layernorm.weight", w.AttnPostNorm, source);
        Check(p + "post_feedforward_layernorm.weight", w.FfnPostNorm, source);
        Check(p + "self_attn.q_proj.bias", w.Bq, source);
        Check(p + "self_attn.k_proj.bias", w.Bk, source);
        Check(p + "self_attn.v_proj.bias", w.Bv, source);
        foreach (var p2 in new[] { Projection.Q, Projection.K, Projection.V, Projection.O, Projection.Gate, Projection.Up, Projection.Down })
        {
            var site = new LinearSite(l, p2);
            Check(site.WeightName, w.Matrix(p2), source);
        }
    }

    static void Check(string name, torch.Tensor? t, string source)
    {
        if (t is null || AllFinite(t)) return;
        throw new SuperQuantException(ErrorCodes.NonFiniteWeights, $"tensor '{name}' in {source} contains NaN or Inf values", source);
    }

    /// <summary>True when no element is NaN or Inf. On CPU fp32 this scans the bits in place: torch's isfinite()
    /// allocates temporaries whose memory glibc kept resident (measured: +100..160 MB on a 418 MB model).</summary>
    public static bool AllFinite(torch.Tensor t)
    {
        if (t.device_type != DeviceType.CPU || t.dtype != torch.ScalarType.Float32 || !t.is_contiguous())
        {
            using var ok = t.isfinite().all();
            return ok.item<bool>();
        }
        using var flat = t.view(-1);
        const long chunk = 1 << 26;
        for (long s = 0; s < flat.shape[0]; s += chunk)
        {
            using var piece = flat.narrow(0, s, Math.Min(chunk, flat.shape[0] - s));
            if (!AllFinite(MemoryMarshal.Cast<byte, uint>(piece.bytes))) return false;
        }
        return true;
    }

    /// <summary>An fp32 value is NaN or Inf exactly when its exponent bits are all ones.</summary>
    static bool AllFinite(ReadOnlySpan<uint> bits)
    {
        const uint exponent = 0x7F800000;
        var mask = new Vector<uint>(exponent);
        int i = 0;
        for (; i <= bits.Length - Vector<uint>.Count; i += Vector<uint>.Count)
        {
            if (Vector.EqualsAny(new Vector<uint>(bits.Slice(i, Vector<uint>.Count)) & mask, mask)) return false;
        }
        for (; i < bits.Length; i++)
            if ((bits[i] & exponent) == exponent) return false;
        return true;
    }
}
