using SuperQuant.Core;
using SuperQuant.Core.Llama;
using TorchSharp;

namespace SuperQuant.Models.Checkpoints;

/// <summary>NaN or Inf weights make every later number meaningless; refuse them at load with the tensor's name.</summary>
public static class NonFiniteCheck
{
    public static void ThrowIfAny(LlamaWeights w, string source)
    {
        void Check(string name, torch.Tensor? t)
        {
            if (t is null) return;
            using var bad = t.isfinite().logical_not().any();
            if (bad.item<bool>())
                throw new SuperQuantException(ErrorCodes.NonFiniteWeights, $"tensor '{name}' in {source} contains NaN or Inf values", source);
        }
        Check("model.embed_tokens.weight", w.TokenEmbedding);
        Check("model.norm.weight", w.FinalNorm);
        for (int l = 0; l < w.Layers.Length; l++)
        {
            Check($"model.layers.{l}.input_layernorm.weight", w.Layers[l].AttnNorm);
            Check($"model.layers.{l}.post_attention_layernorm.weight", w.Layers[l].FfnNorm);
            Check($"model.layers.{l}.self_attn.q_proj.bias", w.Layers[l].Bq);
            Check($"model.layers.{l}.self_attn.k_proj.bias", w.Layers[l].Bk);
            Check($"model.layers.{l}.self_attn.v_proj.bias", w.Layers[l].Bv);
        }
        foreach (LinearSite site in w.LinearSites)
        {
            if (site.Projection == Projection.LmHead && w.LmHead is null) continue;
            Check(site.WeightName, w[site]);
        }
    }
}
