using System.CommandLine;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.NativeFix;
using TorchSharp;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant doctor`: what this machine gives SuperQuant (versions, device, the libstdc++ fix).</summary>
public static class DoctorCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "print one JSON object" };
        var cmd = new Command("doctor", "Print TorchSharp/libtorch versions, which libtorch was chosen (SUPERQUANT_LIBTORCH, SuperQuantLibTorchDir, " +
            "PyTorch, bundled), why others were skipped and the file actually loaded, the device SuperQuant would use, CUDA visibility and the " +
            "libstdc++ fix status.\n" + ExitCodes.HelpText) { json };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            string? host = GlibcxxVersionNeedsPatcher.FindHostLibStdCxx();
            bool hostHas = host != null && GlibcxxVersionNeedsPatcher.DefinesVersion(File.ReadAllBytes(host), GlibcxxVersionNeedsPatcher.RequiredVersion);
            string shim = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
            string shimState = !File.Exists(shim) ? "not present (not Linux x64?)"
                : GlibcxxVersionNeedsPatcher.RequiresVersionStrictly(File.ReadAllBytes(shim))
                    ? $"requires {GlibcxxVersionNeedsPatcher.RequiredVersion}" : "patched or not needed";
            string torchState, device = "unknown", libtorch = "unknown";
            bool cuda = false;
            int threads = 0;
            try
            {
                cuda = torch.cuda.is_available();
                threads = torch.get_num_threads();
                device = ComputeDevice.Resolve(DevicePreference.Auto, Environment.GetEnvironmentVariable(ComputeDevice.EnvironmentVariable),
                    new TorchCudaProbe()).Reason;
                libtorch = torch.__version__;
                torchState = "loaded";
            }
            catch (Exception e) when (e is TypeInitializationException or DllNotFoundException or NotSupportedException or SuperQuantException)
            {
                torchState = "FAILED: " + (e.InnerException?.Message ?? e.Message).Split('\n')[0];
            }
            var choice = SuperQuant.Core.Runtime.LibTorchLoader.Current;
            var info = new
            {
                superquant = typeof(DoctorCommand).Assembly.GetName().Version?.ToString(),
                torchsharp = typeof(torch).Assembly.GetName().Version?.ToString(),
                libtorch,
                libtorch_choice = choice.Describe(),
                libtorch_source = choice.Source,
                libtorch_version = choice.IsBundled ? SuperQuant.Core.Runtime.LibTorchLocator.BundledVersion : choice.Version,
                libtorch_cuda = choice.CudaVersion,
                libtorch_mode = SuperQuant.Core.Runtime.LibTorchLoader.Mode,
                libtorch_loaded_from = SuperQuant.Core.Runtime.LibTorchLoader.LoadedLibTorchPath(),
                libtorch_skipped = choice.Skipped,
                torch = torchState,
                cuda_available = cuda,
                device,
                threads,
                host_libstdcxx = host ?? "not found",
                host_has_glibcxx_3_4_32 = hostHas,
                libtorchsharp_shim = shimState,
                os = System.Runtime.InteropServices.RuntimeInformation.OSDescription,
                cores = Environment.ProcessorCount,
            };
            if (r.GetValue(json)) Console.WriteLine(JsonSerializer.Serialize(info, CliSupport.Json));
            else
            {
                foreach (var p in info.GetType().GetProperties())
                    Console.WriteLine($"{p.Name,-26} " +
                        $"{(p.GetValue(info) is IEnumerable<string> list ? (list.Any() ? string.Join("; ", list) : "none") : p.GetValue(info))}");
            }
            return torchState == "loaded" ? ExitCodes.Success : ExitCodes.InputError;
        }));
        return cmd;
    }
}
