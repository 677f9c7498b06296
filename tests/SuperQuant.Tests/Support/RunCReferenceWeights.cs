namespace SuperQuant.Tests.Support;

/// <summary>Raw wq/wk of a llama2.c file, in the file's own (interleaved-RoPE) row order, read independently.</summary>
public sealed class RunCReferenceWeights
{
    readonly float[] _all;
    readonly int[] _h;

    public RunCReferenceWeights(string path) => _all = ReadAll(path, out _h);

    static float[] ReadAll(string path, out int[] header)
    {
        byte[] b = File.ReadAllBytes(path);
        header = Enumerable.Range(0, 7).Select(i => BitConverter.ToInt32(b, 4 * i)).ToArray();
        var f = new float[(b.Length - 28) / 4];
        Buffer.BlockCopy(b, 28, f, 0, f.Length * 4);
        return f;
    }

    int Dim => _h[0];
    int KvDim => _h[0] * _h[4] / _h[3];
    long WqStart => (long)Math.Abs(_h[5]) * Dim + (long)_h[2] * Dim;

    public float[] Wq(int layer) => _all.AsSpan((int)(WqStart + (long)layer * Dim * Dim), Dim * Dim).ToArray();
    public float[] Wk(int layer) => _all.AsSpan((int)(WqStart + (long)_h[2] * Dim * Dim + (long)layer * Dim * KvDim), Dim * KvDim).ToArray();
}
