using SuperQuant.Models.Text;

namespace SuperQuant.Tests.Support;

/// <summary>A minimal project folder for the pipeline: a planted tiny checkpoint (super weight at layer 1 [17, 45]),
/// a token-id file and a quantize.yaml with one model "tiny" writing models/tiny.sqpk.safetensors.</summary>
public static class TinyProject
{
    public static void Write(string folder)
    {
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 128 };
        SuperWeightPlanter.WriteCheckpoint(Path.Combine(folder, "ckpt"), spec, 1, 17, 45);
        TokenIdFile.Write(Path.Combine(folder, "ids.txt"), Enumerable.Range(0, 80).Select(i => (i * 5 + 1) % 48));
        File.WriteAllText(Path.Combine(folder, "quantize.yaml"), """
            version: 1
            device: cpu
            models:
              - id: tiny
                checkpoint: ckpt
                output: models/tiny.sqpk.safetensors
                weight_bits: 4
                block_size: 32
                z: auto
                calibration_tokens: ids.txt
                evaluation_tokens: ids.txt
                prompt_tokens: "1 2 3"
                context: 40
                gate:
                  metric: kl
                  max_increase: 1
            """);
    }
}
