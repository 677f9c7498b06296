using SuperQuant.Manifest;

namespace SuperQuant.Models.Gguf;

/// <summary>One tensor of a GGUF file as the mix planner sees it: its llama.cpp name and row length (ne[0]).</summary>
public sealed record GgufTensorShape(string Name, long RowLength, bool IsMatrix);

/// <summary>A tensor's planned type and why (for reports): "mix", a named fallback, or an override.</summary>
public sealed record GgufTensorType(string Name, GgmlType Type, string Reason);

/// <summary>
/// Which ggml type each tensor gets for a named file type, as llama.cpp's quantizer decides (llama_tensor_get_type in
/// src/llama-quant.cpp, LLaMA architecture, no experts): Q4_K_M gives attn_v and ffn_down of "more bits" layers Q6_K,
/// the output head Q6_K, and so on. Checked tensor by tensor against llama.cpp's own output in the tests. Rows that a
/// type cannot hold fall back as llama.cpp does (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then
/// F16); where llama.cpp has no fallback (a 32-block type on a row that is not a multiple of 32) its quantizer refuses
/// the whole file, and we write that one tensor as F16 instead, saying so. IQ4_XS falls back to IQ4_NL (32-blocks).
/// </summary>
public static class GgufMix
{
    public static GgmlType DefaultType(GgufFileType t) => t switch
    {
        GgufFileType.F16 => GgmlType.F16,
        GgufFileType.BF16 => GgmlType.BF16,
        GgufFileType.Q8_0 => GgmlType.Q8_0,
        GgufFileType.Q6_K => GgmlType.Q6_K,
        GgufFileType.Q5_K_M or GgufFileType.Q5_K_S => GgmlType.Q5_K,
        GgufFileType.Q5_1 => GgmlType.Q5_1,
        GgufFileType.Q5_0 => GgmlType.Q5_0,
        GgufFileType.Q4_K_M or GgufFileType.Q4_K_S => GgmlType.Q4_K,
        GgufFileType.Q4_1 => GgmlType.Q4_1,
        GgufFileType.Q4_0 => GgmlType.Q4_0,
        GgufFileType.Q3_K_L or GgufFileType.Q3_K_M or GgufFileType.Q3_K_S => GgmlType.Q3_K,
        GgufFileType.Q2_K => GgmlType.Q2_K,
        GgufFileType.IQ4_XS => GgmlType.IQ4_XS,
        GgufFileType.IQ4_NL => GgmlType.IQ4_NL,
        GgufFileType.IQ3_M or GgufFileType.IQ3_S => GgmlType.IQ3_S,
        GgufFileType.IQ3_XXS => GgmlType.IQ3_XXS,
        GgufFileType.IQ2_M => GgmlType.IQ2_S,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    enum Category { TokenEmbd, Output, AttnQ, AttnK, AttnV, AttnOutput, FfnGate, FfnUp, FfnDown, Other }

    static Category CategoryOf(string name) =>
        name == "output.weight" ? Category.Output
        : name == "token_embd.weight" ? Category.TokenEmbd
        : name.Contains("attn_v.weight") ? Category.AttnV
        // Phi-3's fused q/k/v gets attn_v's rules (and counts as one) in the llama.cpp of LLamaSharp 0.30, whose
        // quantizer sorts tensors into categories; checked byte for byte by FamilyQuantizerTests.
        : name.Contains("attn_qkv.weight") ? Category.AttnV
        : name.Contains("attn_k.weight") ? Category.AttnK
        : name.Contains("attn_q.weight") ? Category.AttnQ
        : name.Contains("attn_output.weight") ? Category.AttnOutput
        : name.Contains("ffn_up") ? Category.FfnUp
        : name.Contains("ffn_gate") ? Category.FfnGate
        : name.Contains("ffn_down") ? Category.FfnDown
        : Category.Other;

    static bool UseMoreBits(int i, int n) => i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;

    /// <param name="tensors">In file order (layers ascending, as llama.cpp iterates them).</param>
    /// <param name="layers">Decoder blocks.</param>
    /// <param name="gqa">Query heads per key/value head.</param>
    /// <param name="hasImatrix">Whether importance weights (an imatrix) are given: llama.cpp keeps IQ4's first ffn_down
    /// layers at IQ4 with one, and raises them to Q5_K without.</param>
    public static IReadOnlyList<GgufTensorType> Plan(IReadOnlyList<GgufTensorShape> tensors, GgufFileType fileType, int layers, int gqa,
        bool hasImatrix = false)
    {
        bool iq4 = fileType is GgufFileType.IQ4_XS or GgufFileType.IQ4_NL;
        // llama.cpp's lowest-bit types keep the output at Q5_K and the token embedding at IQ3_S.
        bool lowBit = fileType is GgufFileType.IQ3_XXS or GgufFileType.IQ2_M;
        GgmlType def = DefaultType(fileType);
        bool quantized = def is not (GgmlType.F16 or GgmlType.BF16);
        bool tied = !tensors.Any(t => t.Name == "output.weight");
        int nAttnV = tensors.Count(t => CategoryOf(t.Name) == Category.AttnV);
        int iAttnV = 0, iFfnDown = 0;
        var plan = new List<GgufTensorType>();
        foreach (var t in tensors)
        {
            if (!t.IsMatrix) { plan.Add(new(t.Name, GgmlType.F32, "vector")); continue; }
            if (!quantized) { plan.Add(new(t.Name, def, "mix")); continue; }
            Category cat = CategoryOf(t.Name);
            GgmlType nt = def;
            if (cat == Category.Output || (tied && cat == Category.TokenEmbd))
            {
                if (t.RowLength % GgmlFormat.Of(nt).BlockSize != 0) nt = GgmlType.Q8_0;
                else if (lowBit) nt = GgmlType.Q5_K;
                else if (nt != GgmlType.Q8_0) nt = GgmlType.Q6_K;
            }
            else if (cat == Category.TokenEmbd)
            {
                if (lowBit) nt = GgmlType.IQ3_S;
            }
            else if (fileType == GgufFileType.IQ2_M)
            {
                // llama.cpp's IQ2 branch: attn_v, the first eighth of ffn_down and attn_output one type up.
                if (cat == Category.AttnV) { nt = gqa >= 4 ? GgmlType.Q4_K : GgmlType.IQ3_S; ++iAttnV; }
                else if (cat == Category.FfnDown) { if (iFfnDown < layers / 8) nt = GgmlType.IQ3_S; ++iFfnDown; }
                else if (cat == Category.AttnOutput) nt = GgmlType.IQ3_S;
            }
            else if (cat == Category.AttnV)
            {
                nt = fileType switch
                {
                    GgufFileType.Q2_K => gqa >= 4 ? GgmlType.Q4_K : GgmlType.Q3_K,
                    GgufFileType.Q3_K_M => iAttnV < 2 ? GgmlType.Q5_K : GgmlType.Q4_K,
                    GgufFileType.Q3_K_L => GgmlType.Q5_K,
                    GgufFileType.Q4_K_M or GgufFileType.Q5_K_M when UseMoreBits(iAttnV, nAttnV) => GgmlType.Q6_K,
                    GgufFileType.Q4_K_S when iAttnV < 4 => GgmlType.Q5_K,
                    _ when iq4 && gqa >= 4 => GgmlType.Q5_K,
                    GgufFileType.IQ3_XXS => gqa >= 4 ? GgmlType.Q4_K : hasImatrix ? GgmlType.IQ3_XXS : GgmlType.IQ3_S,
                    GgufFileType.IQ3_S when gqa >= 4 => GgmlType.Q4_K,
                    GgufFileType.IQ3_M => GgmlType.Q4_K,
                    _ => nt,
                };
                ++iAttnV;
            }
            else if (cat == Category.FfnDown)
            {
                int i = iFfnDown, n = layers;
                nt = fileType switch
                {
                    GgufFileType.Q2_K => GgmlType.Q3_K,
                    GgufFileType.Q3_K_M => i < n / 16 ? GgmlType.Q5_K : GgmlType.Q4_K,
                    GgufFileType.Q3_K_L => GgmlType.Q5_K,
                    GgufFileType.Q4_K_M or GgufFileType.Q5_K_M when UseMoreBits(i, n) => GgmlType.Q6_K,
                    GgufFileType.Q4_K_S when i < n / 8 => GgmlType.Q5_K,
                    _ when iq4 && i < n / 8 && !hasImatrix => GgmlType.Q5_K,
                    GgufFileType.IQ3_XXS when !hasImatrix => i < n / 8 ? GgmlType.Q4_K : GgmlType.Q3_K,
                    GgufFileType.IQ3_M when i < n / 8 => GgmlType.Q4_K,
                    _ => nt,
                };
                ++iFfnDown;
            }
            else if (cat == Category.AttnOutput)
            {
                nt = fileType switch
                {
                    GgufFileType.Q2_K => GgmlType.Q3_K,
                    GgufFileType.Q3_K_M => GgmlType.Q4_K,
                    GgufFileType.Q3_K_L => GgmlType.Q5_K,
                    GgufFileType.IQ3_XXS => GgmlType.IQ3_S,
                    GgufFileType.IQ3_M => GgmlType.Q4_K,
                    _ => nt,
                };
            }
            else if (cat is Category.AttnQ or Category.AttnK && fileType == GgufFileType.IQ3_XXS) nt = GgmlType.IQ2_S;
            plan.Add(Fallback(t, nt));
        }
        return plan;
    }

    /// <summary>tensor_type_fallback: a type whose blocks do not divide the row gets the next type that fits.</summary>
    public static GgufTensorType Fallback(GgufTensorShape t, GgmlType type)
    {
        if (t.RowLength % GgmlFormat.Of(type).BlockSize == 0) return new(t.Name, type, "mix");
        GgmlType? next = type switch
        {
            GgmlType.IQ4_XS or GgmlType.IQ3_XXS or GgmlType.IQ3_S or GgmlType.IQ2_S => GgmlType.IQ4_NL,
            GgmlType.Q2_K or GgmlType.Q3_K => GgmlType.Q4_0,
            GgmlType.Q4_K => GgmlType.Q5_0,
            GgmlType.Q5_K => GgmlType.Q5_1,
            GgmlType.Q6_K => GgmlType.Q8_0,
            _ => null,
        };
        if (next is GgmlType n && t.RowLength % GgmlFormat.Of(n).BlockSize == 0)
            return new(t.Name, n, $"{t.RowLength} columns are not a multiple of {GgmlFormat.Of(type).BlockSize}: {type} falls back to {n}, as in llama.cpp");
        string why = next is null
            ? $"{t.RowLength} columns are not a multiple of {GgmlFormat.Of(type).BlockSize}: F16 (llama.cpp's quantizer refuses {type} for this tensor)"
            : $"{t.RowLength} columns are not a multiple of 32: {type} falls back to F16, as in llama.cpp";
        return new(t.Name, GgmlType.F16, why);
    }
}
