using LLama.Native;

namespace SuperQuant.LlamaCpp;

/// <summary>llama.cpp's own quantizer (llama_model_quantize, what the llama-quantize tool runs), with llama-quantize's
/// defaults (the output tensor is quantized too; LLamaSharp's wrapper turns that off). For benchmarks and tests: our
/// GGUF writer is compared with it on the same F16 file.</summary>
public static class LlamaCppQuantizer
{
    /// <param name="type">A llama.cpp file type name: q4_0, q8_0, q2_k, q3_k_m, q4_k_s, q4_k_m, q5_k_m, q6_k, f16, bf16, ...</param>
    public static void Quantize(string source, string destination, string type, int? threads = null, bool pure = false)
    {
        LlamaCppRuntime.EnsureLoaded();
        var p = LLamaModelQuantizeParams.Default();
        p.ftype = ParseFileType(type);
        p.nthread = threads ?? LlamaCppRuntime.DefaultThreads;
        p.pure = pure;
        uint rc = NativeApi.llama_model_quantize(source, destination, ref p);
        if (rc != 0) throw new LlamaCppException($"llama.cpp failed to quantize {source} to {type} (code {rc}): {LlamaCppRuntime.RecentLog()}");
    }

    /// <summary>Exact (case-insensitive) names: LLamaSharp's own parser matches substrings, so "f16" and "q2_k" are ambiguous there.</summary>
    public static LLamaFtype ParseFileType(string type) => type.ToLowerInvariant() switch
    {
        "f32" => LLamaFtype.ALL_F32,
        "f16" => LLamaFtype.MOSTLY_F16,
        "bf16" => LLamaFtype.MOSTLY_BF16,
        "q4_0" => LLamaFtype.MOSTLY_Q4_0,
        "q4_1" => LLamaFtype.MOSTLY_Q4_1,
        "q5_0" => LLamaFtype.MOSTLY_Q5_0,
        "q5_1" => LLamaFtype.MOSTLY_Q5_1,
        "q8_0" => LLamaFtype.MOSTLY_Q8_0,
        "q2_k" => LLamaFtype.MOSTLY_Q2_K,
        "q2_k_s" => LLamaFtype.MOSTLY_Q2_K_S,
        "q3_k_s" => LLamaFtype.MOSTLY_Q3_K_S,
        "q3_k_m" => LLamaFtype.MOSTLY_Q3_K_M,
        "q3_k_l" => LLamaFtype.MOSTLY_Q3_K_L,
        "q4_k_s" => LLamaFtype.MOSTLY_Q4_K_S,
        "q4_k_m" => LLamaFtype.MOSTLY_Q4_K_M,
        "q5_k_s" => LLamaFtype.MOSTLY_Q5_K_S,
        "q5_k_m" => LLamaFtype.MOSTLY_Q5_K_M,
        "q6_k" => LLamaFtype.MOSTLY_Q6_K,
        "iq4_xs" => LLamaFtype.MOSTLY_IQ4_XS,
        "iq4_nl" => LLamaFtype.MOSTLY_IQ4_NL,
        "iq3_m" => LLamaFtype.MOSTLY_IQ3_M,
        "iq3_s" => LLamaFtype.MOSTLY_IQ3_S,
        "iq3_xxs" => LLamaFtype.MOSTLY_IQ3_XXS,
        "iq2_m" => LLamaFtype.MOSTLY_IQ2_M,
        _ => throw new ArgumentException($"unknown llama.cpp file type '{type}'"),
    };
}
