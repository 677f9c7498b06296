using static TorchSharp.torch;

namespace SuperQuant.Core.Llama;

/// <summary>Observation and intervention points of the forward pass. Each method gets the tensor that is about to
/// enter (or just left) a linear layer and returns the tensor the pass continues with: return the argument itself
/// to only observe. The tensors belong to the pass: keep a reduction (a max, a channel), not the tensor.</summary>
public interface IForwardHooks
{
    /// <summary>The token embeddings of <paramref name="tokens"/> ([batch, tokens]), shape [batch, tokens, hidden],
    /// before any embedding scale.</summary>
    Tensor OnEmbedding(Tensor tokens, Tensor embedded) => embedded;

    /// <summary>Input of the linear layer at <paramref name="site"/>, shape [batch, tokens, in].</summary>
    Tensor OnLinearInput(LinearSite site, Tensor input) => input;

    /// <summary>Output of the linear layer at <paramref name="site"/>, shape [batch, tokens, out].</summary>
    Tensor OnLinearOutput(LinearSite site, Tensor output) => output;

    /// <summary>The residual stream after block <paramref name="layer"/>, shape [batch, tokens, hidden] (observe only).</summary>
    void OnBlockOutput(int layer, Tensor hidden) { }
}
