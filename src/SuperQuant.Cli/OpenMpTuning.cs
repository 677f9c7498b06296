using System.Runtime.InteropServices;

namespace SuperQuant.Cli;

/// <summary>
/// Makes libtorch's OpenMP threads sleep, not spin, between parallel regions (OMP_WAIT_POLICY=PASSIVE), unless the user
/// chose a policy. Our quantization kernels run on .NET's thread pool between libtorch operations; spinning OpenMP
/// threads took the cores they need. Measured on 2 cores (`superquant bench quant --throughput-only`, Release): the whole
/// quantize step of a 12-layer dim-768 model went from 1122-1759 MiB/s to 2911 MiB/s; the forward pass did not change
/// (`bench forward`: 568 vs 560 tokens/s). libgomp reads the variable once, when libtorch loads, so this runs first;
/// .NET's Environment.SetEnvironmentVariable does not reach the native environment on Unix, hence setenv.
/// </summary>
public static class OpenMpTuning
{
    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv(string name, string value, int overwrite);

    public static void Apply()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") != null) return; // the user chose
        try
        {
            SetEnv("OMP_WAIT_POLICY", "PASSIVE", 0);
            Environment.SetEnvironmentVariable("OMP_WAIT_POLICY", "PASSIVE"); // the managed copy, for child processes we start
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
    }
}
