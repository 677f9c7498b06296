using SuperQuant.Core.Llama;
using SuperQuant.Manifest;

namespace SuperQuant.Models.Gguf;

/// <summary>Each tensor's type, in one place: llama.cpp's mix for the named file type (<see cref="GgufMix"/>), then the
/// export's overrides (a super weight's matrix raised one step, <see cref="RaisedOneStep"/>; a size budget's choice,
/// <see cref="GgufBudget"/>), each through llama.cpp's fallback for rows its blocks cannot hold.</summary>
public static class GgufTensorTypes
{
    public static IReadOnlyList<GgufTensorType> Plan(LlamaConfig c, IReadOnlyList<GgufTensor> tensors, GgufExport export)
    {
        var shapes = tensors.Select(t => new GgufTensorShape(t.Name, t.Dims[0], t.Dims.Length >= 2)).ToList();
        var plan = GgufMix.Plan(shapes, export.FileType, c.NumLayers, c.NumHeads / c.NumKvHeads, hasImatrix: export.Importance is not null).ToList();
        if (export.TypeOverrides is { } overrides)
            for (int i = 0; i < plan.Count; i++)
                if (overrides.TryGetValue(plan[i].Name, out var o))
                {
                    var f = GgufMix.Fallback(shapes[i], o);
                    plan[i] = f with { Reason = f.Reason != "mix" ? f.Reason : export.OverrideReason ?? "super weight: raised from " + plan[i].Type };
                }
        return plan;
    }

    /// <summary>One step above the file type's main type (Q8_0 at the top).</summary>
    public static GgmlType RaisedOneStep(GgufFileType t) => GgufMix.DefaultType(t) switch
    {
        GgmlType.Q2_K or GgmlType.IQ2_S => GgmlType.Q4_K,
        GgmlType.Q3_K or GgmlType.IQ3_S or GgmlType.IQ3_XXS => GgmlType.Q5_K,
        GgmlType.Q4_K or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.IQ4_XS or GgmlType.IQ4_NL => GgmlType.Q6_K,
        _ => GgmlType.Q8_0,
    };
}
